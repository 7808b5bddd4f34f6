"""rlvr.synth.client: a real HTTP server on 127.0.0.1 speaking the chat completions protocol,
the in-process engine on a tiny random model, and the scripted client."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from rlvr.synth.client import ChatRequest, OpenAIClient, ScriptedClient, VLMClient, make_client


def noise_image(seed: int, size=(23, 17)) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def ask(text: str, image=None, **kwargs) -> ChatRequest:
    parts = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return ChatRequest(messages=[{"role": "user", "content": parts}], **kwargs)


class FakeServer:
    """POST /v1/chat/completions: choice j of a request whose last text is T reads "T #j".

    ``statuses``: the status of each next hit (then 200); ``delay_s``: how long each reply
    takes; ``ignore_n``: one choice whatever n asks. Choices are sent in reverse index order,
    as a server may. Records every hit's body and headers and the most requests in flight.
    """

    def __init__(self):
        self.statuses: list[int] = []
        self.delay_s, self.ignore_n = 0.0, False
        self.bodies, self.headers = [], []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    status = server.statuses.pop(0) if server.statuses else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay_s)
                    reply = {"error": f"status {status}"} if status != 200 else server.reply(body)
                    data = json.dumps(reply).encode()
                    self.send_response(status if self.path == "/v1/chat/completions" else 404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout test)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def reply(self, body: dict) -> dict:
        text = [p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"][-1]
        n = 1 if self.ignore_n else body["n"]
        choices = [{"index": j, "message": {"role": "assistant", "content": f"{text} #{j}"}, "finish_reason": "stop"}
                   for j in range(n)]
        return {"object": "chat.completion", "choices": choices[::-1]}

    @property
    def hits(self) -> int:
        return len(self.bodies)


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def client(server, **kwargs) -> OpenAIClient:
    return OpenAIClient(server.url, "tiny-vlm", **{"backoff_s": 0.01, **kwargs})


def test_n_samples_in_order_and_the_image_arrives_as_a_png_data_url(server, monkeypatch):
    monkeypatch.setenv("TEST_SYNTH_KEY", "secret-123")
    image = noise_image(0)
    c = client(server, api_key_env="TEST_SYNTH_KEY", extra_body={"top_p": 0.9})
    out = c.complete([ask("first", image, n=3, temperature=0.7, max_tokens=50, seed=5), ask("second")])
    assert out == [["first #0", "first #1", "first #2"], ["second #0"]]
    assert c.failures == {} and server.hits == 2
    body = next(b for b in server.bodies if b["n"] == 3)
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"], body["top_p"]) == \
        ("tiny-vlm", 0.7, 50, 5, 0.9)
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "first"}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == image.size and sent.tobytes() == image.tobytes()
    assert all(h["Authorization"] == "Bearer secret-123" for h in server.headers)
    assert "secret-123" not in repr(c)


def test_retries_after_500_and_429_then_succeeds(server):
    server.statuses = [500, 429]
    c = client(server, retries=4)
    assert c.complete([ask("q", n=2)]) == [["q #0", "q #1"]]
    assert server.hits == 3 and c.stats["retries"] == 2 and c.failures == {}


def test_retries_run_out_and_the_samples_are_counted_lost(server, caplog):
    server.statuses = [503, 503, 503, 503]
    c = client(server, retries=2)
    with caplog.at_level(logging.WARNING, logger="rlvr.synth"):
        assert c.complete([ask("q", n=2)]) == [[None, None]]
    assert server.hits == 3 and c.failures == {"http_503": 2}
    assert "HTTP 503" in caplog.text and "after 2 retries" in caplog.text


def test_400_is_not_retried(server):
    server.statuses = [400]
    c = client(server, retries=4)
    assert c.complete([ask("q", n=2)]) == [[None, None]]
    assert server.hits == 1 and c.failures == {"http_400": 2} and c.stats["retries"] == 0


def test_a_reply_slower_than_timeout_s_is_a_counted_timeout(server):
    server.delay_s = 1.0
    c = client(server, timeout_s=0.25, retries=3)
    start = time.perf_counter()
    assert c.complete([ask("q")]) == [[None]]
    assert time.perf_counter() - start < 0.9  # gave up at the timeout, and did not retry
    assert c.failures == {"timeout": 1} and server.hits == 1


def test_an_unreachable_server_is_retried_then_counted():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = OpenAIClient(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff_s=0.01)
    assert c.complete([ask("q")]) == [[None]]
    assert c.failures == {"connection": 1} and c.stats["retries"] == 2


def test_the_cache_answers_an_identical_request_without_the_server(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SYNTH_KEY", "secret-123")
    cache = str(tmp_path / "cache")
    first = client(server, cache_dir=cache, api_key_env="TEST_SYNTH_KEY")
    request = ask("q", noise_image(1), n=2, temperature=1.0, seed=7)
    assert first.complete([request]) == [["q #0", "q #1"]] and server.hits == 1
    again = client(server, cache_dir=cache)  # a new client (a rerun) reads the same folder
    assert again.complete([ask("q", noise_image(1), n=2, temperature=1.0, seed=7)]) == [["q #0", "q #1"]]
    assert server.hits == 1 and again.stats["cache_hits"] == 1
    again.complete([ask("q", noise_image(2), n=2, temperature=1.0, seed=7)])  # another image: a miss
    assert server.hits == 2
    again.complete([ask("q", noise_image(1), n=2, temperature=1.0, seed=8)])  # another seed: a miss
    assert server.hits == 3
    files = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs]
    assert len(files) == 3 and not any("secret-123" in open(f).read() for f in files)


def test_the_cache_skips_unseeded_sampling_and_failed_replies(server, tmp_path):
    c = client(server, cache_dir=str(tmp_path))
    c.complete([ask("q", temperature=1.0)])
    c.complete([ask("q", temperature=1.0)])
    assert server.hits == 2  # two independent draws, not a copy
    server.statuses = [400]
    assert c.complete([ask("g")]) == [[None]]
    assert c.complete([ask("g")]) == [["g #0"]] and server.hits == 4  # the failure was not cached
    assert c.complete([ask("g")]) == [["g #0"]] and server.hits == 4  # the success was


def test_requests_overlap_up_to_concurrency(server):
    server.delay_s = 0.3
    c = client(server, concurrency=3)
    start = time.perf_counter()
    out = c.complete([ask(f"q{i}") for i in range(6)])
    assert out == [[f"q{i} #0"] for i in range(6)]
    assert server.max_in_flight == 3 and time.perf_counter() - start < 1.5  # 6 x 0.3 s one at a time = 1.8 s


def test_a_server_that_ignores_n_and_a_bad_request_are_counted(server, tmp_path):
    server.ignore_n = True
    c = client(server)
    out = c.complete([ask("q", n=3), ask("bad", str(tmp_path / "missing.png")), ChatRequest(messages=[])])
    assert out == [["q #0", None, None], [None], [None]]
    assert c.failures == {"fewer_choices": 2, "bad_request": 2} and server.hits == 1


def test_an_error_while_sending_one_request_loses_only_that_request(server, monkeypatch):
    import rlvr.synth.client as module

    def data_url(image):
        if image.size == (5, 5):
            raise OSError("cannot encode")
        return "data:image/png;base64,"

    monkeypatch.setattr(module, "data_url", data_url)
    c = client(server)
    assert c.complete([ask("q", noise_image(0, (5, 5))), ask("r", noise_image(0))]) == [[None], ["r #0"]]
    assert c.failures == {"backend_error": 1}
    assert c.complete([ask("s", seed="7")]) == [[None]] and c.failures["bad_request"] == 1


def test_settings_are_checked_when_the_client_is_built(monkeypatch):
    monkeypatch.delenv("TEST_SYNTH_MISSING", raising=False)
    with pytest.raises(ValueError, match="TEST_SYNTH_MISSING"):
        OpenAIClient("http://127.0.0.1:1/v1", "m", api_key_env="TEST_SYNTH_MISSING")
    with pytest.raises(ValueError, match="http://"):
        OpenAIClient("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match="openai, engine, scripted"):
        make_client("ollama")
    with pytest.raises(ValueError, match="not temprature"):
        make_client("openai", base_url="http://x/v1", model="m", temprature=1.0)


def test_the_scripted_client_and_complete_never_raising():
    c = make_client("scripted", responder=["a", ["x", None]])
    out = c.complete([ask("1"), ask("2", n=2), ask("3")])
    assert out == [["a"], ["x", None], [None]]
    assert [r.messages[0]["content"][-1]["text"] for r in c.requests] == ["1", "2", "3"]
    assert c.failures == {"scripted_none": 1, "scripted_error": 1}

    def boom(request):
        raise RuntimeError("no")

    assert ScriptedClient(boom).complete([ask("q", n=2)]) == [[None, None]]

    class Broken(VLMClient):
        name = "broken"

        def _complete(self, requests):
            raise KeyError("bug")

    broken = Broken()
    assert broken.complete([ask("q"), ask("r", n=2)]) == [[None], [None, None]]
    assert broken.failures == {"backend_error": 3}


def test_the_engine_client_samples_n_texts_and_greedy_is_reproducible(qwen25_dir):
    from rlvr.synth.client import EngineClient

    with pytest.raises(ValueError, match="cannot load the model at '/nonexistent/model'"):
        EngineClient("/nonexistent/model")
    c = EngineClient(qwen25_dir, dtype="float32", device="cpu")
    image = noise_image(3, (32, 32))
    requests = [ask("what?", image, n=2, max_tokens=4), ask("text only", n=3, temperature=1.0, max_tokens=4, seed=1)]
    first = c.complete(requests)
    assert [len(t) for t in first] == [2, 3] and all(isinstance(t, str) for ts in first for t in ts)
    assert c.failures == {}
    assert first[0][0] == first[0][1]  # greedy: both samples are the most likely tokens
    assert len(set(first[1])) > 1  # sampled: a random model's samples differ
    assert c.complete(requests) == first  # greedy, and sampling with a seed, are reproducible
    assert c.complete([ask("bad", "/nonexistent.png")]) == [[None]] and c.failures == {"bad_request": 1}
