"""Model-backed tool services: real HTTP servers on 127.0.0.1 (tiny random-weight detector and SAM, and
scripted slow/failing models), the client tool's timeouts and retries, health checks, bad requests."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from rlvr.agent import service_models, services
from rlvr.agent.services import RemoteTool, ServiceConfig, check_services, serve
from rlvr.agent.tools import Observation, ToolCall, ToolRegistry


class Scripted:
    """A service model that waits ``seconds`` (or until ``gate`` is set), and raises on query "boom"."""

    name = "scripted"
    description = "a test tool"
    parameters = {"type": "object", "properties": {"query": {"type": "string"}, "seconds": {"type": "number"}}}

    def __init__(self, gate: threading.Event | None = None):
        self.gate, self.lock = gate, threading.Lock()
        self.running = self.peak = self.runs = 0

    def run(self, arguments, images):
        with self.lock:
            self.running += 1
            self.runs += 1
            self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            time.sleep(arguments.get("seconds", 0))
            if arguments.get("query") == "boom":
                raise RuntimeError("out of memory (scripted)")
            return f"ok {arguments.get('query', '')}", [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
        finally:
            with self.lock:
                self.running -= 1


def _tool(server, **kw) -> RemoteTool:
    return RemoteTool("scripted", server.url, description=Scripted.description, parameters=Scripted.parameters, **kw)


def _post(url: str, body: bytes | dict, path: str = "/call", headers: dict | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _get(url: str, path: str = "/health", headers: dict | None = None) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers or {}), timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait_until(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s}s for {what}"
        time.sleep(0.01)


def _png(image: Image.Image) -> str:
    return services.encode_image(image)


@pytest.fixture(scope="module")
def detect_server(tmp_path_factory):
    path = service_models.make_tiny_grounding_dino(str(tmp_path_factory.mktemp("gdino")))
    server = serve(service_models.load_model("detect", path), model_name=path, max_concurrency=2)
    yield server
    server.stop()


@pytest.fixture
def scripted():
    servers = []

    def start(max_concurrency=1, gate=None, token=None):
        model = Scripted(gate)
        server = serve(model, max_concurrency=max_concurrency, token=token)
        servers.append(server)
        return server, model

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------- the detector service


def test_health_answers_with_the_tool_and_its_schema(detect_server):
    status, health = _get(detect_server.url)
    assert status == 200
    assert health["ready"] is True and health["tool"] == "detect" and health["in_flight"] == 0
    assert health["max_concurrency"] == 2 and health["parameters"]["required"] == ["query"]
    assert _get(detect_server.url, "/nope")[0] == 404


def test_detect_call_returns_text_and_an_image_of_the_input_size(detect_server):
    tool = RemoteTool("detect", detect_server.url, timeout_s=20)
    image = Image.new("RGB", (80, 60), (30, 120, 200))
    started = time.perf_counter()
    obs = tool.call({"query": "cup. circle", "image_index": 0}, [image, Image.new("RGB", (10, 10))])
    elapsed = time.perf_counter() - started
    assert isinstance(obs, Observation) and obs.error is None, obs.text
    assert len(obs.images) == 1 and obs.images[0].size == (80, 60)
    assert obs.text.startswith("1. ") and "(from image 0; this is image 2)" in obs.text
    lines = obs.text.split(" (from")[0].split("\n")
    for line in lines:  # "k. name [x1, y1, x2, y2] score s", 0-1000 boxes
        box = json.loads(line[line.index("["): line.index("]") + 1])
        assert line.split()[1] in ("cup", "circle") and 0 <= box[0] <= box[2] <= 1000 and 0 <= box[1] <= box[3] <= 1000
    assert elapsed < 5
    # Through the registry, as the rollout calls it: image_index is the client's, checked before any request.
    registry = ToolRegistry([tool])
    bad = registry.run(ToolCall("detect", {"query": "cup", "image_index": 3}), [image])
    assert bad.error and "image_index 3 is out of range" in bad.text


def test_concurrent_calls_on_one_model_agree(detect_server):
    # K=2 forwards of the same torch model at once, two more retried after 503: all give the same answer.
    image = Image.new("RGB", (64, 48), (200, 200, 30))
    tool = RemoteTool("detect", detect_server.url, timeout_s=20, retries=20, backoff_s=0.02)
    alone = tool.call({"query": "cup"}, [image])
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(tool.call({"query": "cup"}, [image]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [o.text for o in out] == [alone.text] * 4 and alone.error is None
    assert all(o.images[0].tobytes() == alone.images[0].tobytes() for o in out)


def test_segment_service_with_tiny_sam(tmp_path):
    server = serve(service_models.load_model("segment", service_models.make_tiny_sam(str(tmp_path / "sam"))))
    try:
        obs = RemoteTool("segment", server.url, timeout_s=20).call({"x": 500, "y": 250},
                                                                   [Image.new("RGB", (90, 50), (200, 10, 10))])
        assert obs.error is None, obs.text
        assert obs.images[0].size == (90, 50) and obs.text.startswith(("object at (500, 250)", "no object found"))
        status, reply, _ = _post(server.url, {"arguments": {"x": 1200, "y": 0}, "images": []})
        assert status == 400 and reply["error"] == "argument 'x' must be <= 1000, got 1200"
    finally:
        server.stop()


# --------------------------------------------------------------------------- limits, timeouts, retries


def test_concurrency_limit_refuses_beyond_k_with_503(scripted):
    gate = threading.Event()
    server, model = scripted(max_concurrency=2, gate=gate)
    image = _png(Image.new("RGB", (8, 8)))
    results: list = []

    def call():
        results.append(_post(server.url, {"arguments": {"query": "x"}, "images": [image]}))

    threads = [threading.Thread(target=call) for _ in range(4)]  # K + 2
    for t in threads:
        t.start()
    _wait_until(lambda: server.in_flight == 2 and server.refused == 2, "2 in flight and 2 refused")
    assert _get(server.url)[1]["in_flight"] == 2  # health answers while the slots are busy
    gate.set()
    for t in threads:
        t.join(10)
    assert sorted(status for status, _, _ in results) == [200, 200, 503, 503]
    refused = [(reply, headers) for status, reply, headers in results if status == 503]
    assert all("busy" in reply["error"] and headers["Retry-After"] == "1" for reply, headers in refused)
    assert model.peak == 2 and server.peak_in_flight == 2 and model.runs == 2


def test_client_timeout_is_an_error_observation_in_time(scripted):
    server, model = scripted()
    tool = _tool(server, timeout_s=0.5, retries=2, backoff_s=0.1)
    started = time.perf_counter()
    obs = tool.call({"seconds": 3.0}, [Image.new("RGB", (8, 8))])
    elapsed = time.perf_counter() - started
    assert obs.error == "scripted: no reply within 0.5s" and obs.text.startswith("Error: ")
    assert elapsed < 0.5 + 0.4 and tool.attempts == 1  # a timeout is not retried: no time is left


def test_retries_after_503_then_success(scripted):
    gate = threading.Event()
    server, model = scripted(max_concurrency=1, gate=gate)
    blocker = threading.Thread(target=_post, args=(server.url, {"arguments": {"query": "first"}}))
    blocker.start()
    _wait_until(lambda: server.in_flight == 1, "the blocking call")
    tool = _tool(server, timeout_s=10, retries=5, backoff_s=0.05)
    out: list = []
    caller = threading.Thread(target=lambda: out.append(tool.call({"query": "second"}, [Image.new("RGB", (6, 4))])))
    caller.start()
    _wait_until(lambda: server.refused >= 2, "two refusals")  # then the slot frees
    gate.set()
    caller.join(10)
    blocker.join(10)
    obs = out[0]
    assert obs.error is None and obs.text == "ok second (from image 0; this is image 1)" and obs.images[0].size == (6, 4)
    assert tool.attempts == server.refused + 1  # every refused attempt retried, the last one served
    assert server.hits == tool.attempts + 1 and model.runs == 2

    # Retries exhausted: the error says how many attempts were made.
    gate.clear()
    blocker = threading.Thread(target=_post, args=(server.url, {"arguments": {}}))
    blocker.start()
    _wait_until(lambda: server.in_flight == 1, "the blocking call")
    obs = _tool(server, retries=1, backoff_s=0.01).call({}, [Image.new("RGB", (6, 4))])
    gate.set()
    blocker.join(10)
    assert obs.error.startswith("scripted: service unavailable after 2 attempt(s): busy")


def test_unreachable_service_is_retried_then_an_error_observation():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tool = RemoteTool("detect", f"http://127.0.0.1:{port}", timeout_s=5, retries=2, backoff_s=0.01)
    obs = tool.call({"query": "cup"}, [Image.new("RGB", (8, 8))])
    assert tool.attempts == 3 and obs.error.startswith("detect: service unavailable after 3 attempt(s): cannot reach")


# --------------------------------------------------------------------------- bad requests, model errors


def test_bad_requests_get_400_with_a_message(scripted):
    server, model = scripted()
    url = server.url
    assert _post(url, b"{not json")[:2] == (400, {"error": "request body is not JSON: Expecting property name "
                                                            "enclosed in double quotes: line 1 column 2 (char 1)"})
    assert _post(url, {"arguments": {"query": 3}})[:2] == (400, {"error": "argument 'query' must be a string, got 3"})
    assert _post(url, {"arguments": {"qeury": "x"}})[1]["error"].startswith("unknown argument 'qeury'")
    assert _post(url, {"arguments": {}, "images": ["not base64!"]})[1]["error"].startswith("not a base64 image")
    assert _post(url, {"arguments": {}, "images": [base64.b64encode(b"text").decode()]})[0] == 400
    assert _post(url, {"arguments": {}, "extra": 1})[1]["error"].startswith("request must be a JSON object")
    server.max_image_pixels = 100
    status, reply, _ = _post(url, {"arguments": {}, "images": [_png(Image.new("RGB", (20, 10)))]})
    assert status == 400 and reply["error"] == "image is 20x10, over the service's 100 pixels"
    assert model.runs == 0 and server.hits == 0  # none reached the model
    # A 400 is the policy's mistake: the client does not retry it, and the model reads the message.
    tool = _tool(server, retries=3)
    obs = tool.call({"query": ["a"]}, [Image.new("RGB", (4, 4))])
    assert tool.attempts == 1 and obs.error == "scripted: argument 'query' must be a string, got [\"a\"]"


def test_model_exception_is_an_error_reply_and_the_server_keeps_serving(scripted):
    server, model = scripted()
    status, reply, _ = _post(server.url, {"arguments": {"query": "boom"}})
    assert status == 200 and reply == {"text": "", "images": [],
                                       "error": "the scripted tool failed: RuntimeError: out of memory (scripted)"}
    obs = _tool(server).call({"query": "after"}, [Image.new("RGB", (3, 5))])
    assert obs.error is None and obs.images[0].size == (3, 5)
    assert server.in_flight == 0 and model.runs == 2 and _get(server.url)[1]["served"] == 2


def test_token_is_required_when_set(scripted):
    server, _ = scripted(token="s3cret")
    assert _get(server.url)[0] == 401
    assert _post(server.url, {"arguments": {}})[0] == 401
    assert _get(server.url, headers={"Authorization": "Bearer s3cret"})[0] == 200
    obs = _tool(server, token="wrong", retries=3).call({}, [Image.new("RGB", (2, 2))])
    assert obs.error.startswith("scripted: missing or wrong token")
    assert _tool(server, token="s3cret").call({}, [Image.new("RGB", (2, 2))]).error is None


# --------------------------------------------------------------------------- config and start-of-training check


def test_check_services_reports_each_service(detect_server, monkeypatch):
    monkeypatch.setenv("TOOL_TOKEN_UNSET_FOR_TEST", "")
    report = check_services([ServiceConfig("detect", detect_server.url),
                             ServiceConfig("segment", detect_server.url),
                             ServiceConfig("ocr", "http://127.0.0.1:9")], timeout_s=2)
    assert report["detect"]["ok"] is True and report["detect"]["health"]["tool"] == "detect"
    assert report["segment"]["ok"] is False and "serves tool 'detect', not 'segment'" in report["segment"]["error"]
    assert report["ocr"]["ok"] is False and report["ocr"]["error"].startswith("cannot reach http://127.0.0.1:9/health")
    tool = RemoteTool.from_config(ServiceConfig("detect", detect_server.url, timeout_s=3, retries=1))
    assert (tool.timeout_s, tool.retries, tool.parameters["properties"]["image_index"]["minimum"]) == (3, 1, 0)
    unset = ServiceConfig("detect", detect_server.url, token_env="TOOL_TOKEN_UNSET_FOR_TEST")
    with pytest.raises(ValueError, match="TOOL_TOKEN_UNSET_FOR_TEST is not set"):
        RemoteTool.from_config(unset)
    assert check_services([unset])["detect"]["error"].endswith("/health: token_env TOOL_TOKEN_UNSET_FOR_TEST is not set "
                                                               "in the environment")
    with pytest.raises(ValueError, match="need an http.s. url, timeout_s > 0"):
        RemoteTool.from_config(ServiceConfig("detect", "127.0.0.1:8101"))


def test_command_line_errors_are_messages(capsys):
    assert services.main(["--tool", "crop", "--model", "some/model"]) == 2
    assert "unknown tool 'crop'; the built-in service tools are ['detect', 'ocr', 'segment']" in capsys.readouterr().err
    assert services.main(["--tool", "ocr"]) == 2
    assert "the ocr service has no built-in model" in capsys.readouterr().err
    assert services.main(["--tool", "detect"]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert services.main(["--tool", "detect", "--tiny", "--token-env", "RLVR_TEST_UNSET_TOKEN"]) == 2
    assert "--token-env RLVR_TEST_UNSET_TOKEN: the variable is not set" in capsys.readouterr().err
    assert services.main(["--tool", "ocr", "--tiny"]) == 2
    assert "--tiny builds ['detect', 'segment'] models, not 'ocr'" in capsys.readouterr().err
