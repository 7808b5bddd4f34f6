"""Model-backed tools as HTTP services (detect, segment, OCR), and the client tool the rollout calls.

One service = one process = one model (``rlvr.agent.service_models``), as OpenThinkIMG deploys them::

    python -m rlvr.agent.services --tool detect --model IDEA-Research/grounding-dino-base --port 8101 --max-concurrency 2
    python -m rlvr.agent.services --tool segment --tiny     # a random-weight model, to try the wiring

Protocol (JSON over HTTP, standard library only):

- ``GET /health`` -> 200 ``{"ready", "tool", "model", "in_flight", "max_concurrency", "served", "description",
  "parameters"}``.
- ``POST /call`` ``{"arguments": {...}, "images": [base64 PNG, ...]}`` -> 200 ``{"text", "images": [base64 PNG],
  "error": null}``; a model exception or an argument that does not fit the image -> 200 with ``error`` set
  (the policy reads it; the server keeps serving); a malformed request, arguments outside the schema, an
  image too large -> 400 ``{"error": message}``; a bad token -> 401; more than ``max_concurrency`` calls in
  flight -> 503 with ``Retry-After``.

Why 503 and not a queue: the client owns the time limit (``timeout_s``) and retries 503 with backoff, so a
server-side queue would only hide overload from it and hold connections open past the client's deadline;
a refused call costs one round trip, and ``in_flight`` in ``/health`` shows the load.

Security (PITFALLS "Services and secrets"): binds 127.0.0.1 unless ``--host`` says otherwise; an optional shared
token (``--token-env VAR``, sent as ``Authorization: Bearer``); arguments checked; request bytes and pixels capped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from rlvr.agent.service_models import MAX_IMAGE_PIXELS, decode_image, encode_image
from rlvr.agent.tools import IMAGE_INDEX, Observation, Tool, ToolArgumentError, pick_image, validate_arguments

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_IMAGES = 8


# --------------------------------------------------------------------------- the server


class ToolServer(ThreadingHTTPServer):
    """One service model behind ``/health`` and ``/call``; at most ``max_concurrency`` calls run at once."""

    daemon_threads = True

    def __init__(self, model, address: tuple[str, int] = ("127.0.0.1", 0), max_concurrency: int = 1,
                 model_name: str = "", token: str | None = None, retry_after_s: float = 1.0,
                 max_image_pixels: int = MAX_IMAGE_PIXELS):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        super().__init__(address, _Handler)
        self.model, self.model_name, self.token = model, model_name, token
        self.max_concurrency, self.retry_after_s = max_concurrency, retry_after_s
        self.max_image_pixels = max_image_pixels  # per image: PIL decodes the whole image into memory
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.lock = threading.Lock()
        self.in_flight = self.peak_in_flight = self.served = self.refused = 0
        self.hits = 0  # well-formed POST /call requests, served or refused

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve on a daemon thread (tests, or several services in one process)."""
        thread = threading.Thread(target=self.serve_forever, name=f"tool-service-{self.model.name}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ToolServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the default writes every request to stderr
        logger.debug(format, *args)

    def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        if self.server.token is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
            return True
        self._reply(401, {"error": "missing or wrong token: send 'Authorization: Bearer <token>'"})
        return False

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(404, {"error": f"no such path {self.path!r}; GET /health, POST /call"})
            return
        if not self._authorised():
            return
        s = self.server
        self._reply(200, {"ready": True, "tool": s.model.name, "model": s.model_name, "in_flight": s.in_flight,
                          "max_concurrency": s.max_concurrency, "served": s.served, "refused": s.refused,
                          "description": s.model.description, "parameters": s.model.parameters})

    def do_POST(self) -> None:
        if self.path != "/call":
            self._reply(404, {"error": f"no such path {self.path!r}; GET /health, POST /call"})
            return
        if not self._authorised():
            return
        try:
            arguments, images = self._read_call()
        except ValueError as e:
            self._reply(400, {"error": str(e)})
            return
        s = self.server
        with s.lock:
            s.hits += 1
        if not s.slots.acquire(blocking=False):
            with s.lock:
                s.refused += 1
            self._reply(503, {"error": f"busy: {s.max_concurrency} call(s) in flight, retry later"},
                        {"Retry-After": str(max(1, round(s.retry_after_s)))})
            return
        with s.lock:
            s.in_flight += 1
            s.peak_in_flight = max(s.peak_in_flight, s.in_flight)
        try:
            text, out_images = s.model.run(arguments, images)
            body = {"text": text, "images": [encode_image(im) for im in out_images], "error": None}
        except ToolArgumentError as e:  # the arguments do not fit the image: the policy's mistake, in its words
            body = {"text": "", "images": [], "error": f"{s.model.name}: {e}"}
        except Exception as e:  # a model failure must not take the service down
            logger.exception("tool %s failed on %s", s.model.name, arguments)
            body = {"text": "", "images": [], "error": f"the {s.model.name} tool failed: {type(e).__name__}: {e}"}
        finally:
            with s.lock:
                s.in_flight -= 1
                s.served += 1
            s.slots.release()
        self._reply(200, body)

    def _read_call(self) -> tuple[dict, list[Image.Image]]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ValueError("POST /call needs a Content-Length header") from None
        if length > MAX_BODY_BYTES:
            raise ValueError(f"request is {length} bytes, over the service's {MAX_BODY_BYTES}")
        raw = self.rfile.read(length)
        try:
            request = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"request body is not JSON: {e}") from None
        if not isinstance(request, dict) or not set(request) <= {"arguments", "images"}:
            raise ValueError('request must be a JSON object {"arguments": {...}, "images": [base64 PNG, ...]}')
        arguments, problem = validate_arguments(request.get("arguments", {}), self.server.model.parameters)
        if problem:
            raise ValueError(problem)
        images = request.get("images", [])
        if not isinstance(images, list) or not all(isinstance(im, str) for im in images):
            raise ValueError("images must be a list of base64-encoded PNG strings")
        if len(images) > MAX_IMAGES:
            raise ValueError(f"{len(images)} images, over the service's {MAX_IMAGES}")
        return arguments, [decode_image(im, self.server.max_image_pixels) for im in images]


def serve(model, host: str = "127.0.0.1", port: int = 0, max_concurrency: int = 1, model_name: str = "",
          token: str | None = None) -> ToolServer:
    """A started service on its own thread; ``server.url`` is where it listens (port 0: any free port)."""
    server = ToolServer(model, (host, port), max_concurrency, model_name, token)
    server.start()
    return server


# --------------------------------------------------------------------------- the client


@dataclasses.dataclass
class ServiceConfig:
    """One model-backed tool the trainer calls: the static list of them goes in the config."""

    name: str  # the tool name the policy writes in its call, e.g. "detect"
    url: str  # e.g. "http://127.0.0.1:8101"
    timeout_s: float = 8.0  # the whole call, retries and backoff included; under ToolRegistry.run's time limit (10 s)
    retries: int = 2  # further attempts after a connection error, 503 or other 5xx
    backoff_s: float = 0.5  # wait before retry k (from 0) is backoff_s * 2**k, within timeout_s
    token_env: str | None = None  # environment variable holding the shared token, if the service wants one


class RemoteTool(Tool):
    """A tool whose ``call`` posts to a service. Never raises: failures are error observations the policy reads.

    ``timeout_s`` bounds the whole call (every attempt and backoff); connection errors, 503 and other 5xx are
    retried ``retries`` times; 4xx are not (the same request would fail again) and a timeout is not (no time
    is left). ``description`` and ``parameters`` default to the built-in tool of that name; ``image_index``
    (which image of the conversation) is added here: the client sends only that image.
    """

    def __init__(self, name: str, url: str, timeout_s: float = 8.0, retries: int = 2, backoff_s: float = 0.5,
                 description: str | None = None, parameters: dict | None = None, token: str | None = None):
        from rlvr.agent.service_models import MODELS

        builtin = MODELS.get(name)
        if (description is None or parameters is None) and builtin is None:
            raise ValueError(f"tool {name!r} is not built in ({sorted(MODELS)}): give its description and parameters")
        if not (url.startswith(("http://", "https://")) and timeout_s > 0 and retries >= 0 and backoff_s >= 0):
            raise ValueError(f"tool {name!r}: need an http(s) url, timeout_s > 0, retries >= 0 and backoff_s >= 0; "
                             f"got {url!r}, {timeout_s}, {retries}, {backoff_s}")
        self.name, self.url, self.timeout_s = name, url.rstrip("/"), timeout_s
        self.retries, self.backoff_s, self.token = retries, backoff_s, token
        self.description = description if description is not None else builtin.description
        served = parameters if parameters is not None else builtin.parameters
        self.served_parameters = served
        self.parameters = {**served, "properties": {**served.get("properties", {}), "image_index": IMAGE_INDEX}}
        self.attempts = 0  # requests sent, over all calls

    @classmethod
    def from_config(cls, config: ServiceConfig) -> RemoteTool:
        token = os.environ.get(config.token_env) if config.token_env else None
        if config.token_env and not token:
            raise ValueError(f"service {config.name!r}: token_env {config.token_env} is not set in the environment")
        return cls(config.name, config.url, config.timeout_s, config.retries, config.backoff_s, token=token)

    def call(self, arguments: dict, images: list) -> Observation:
        arguments = dict(arguments)
        index = arguments.pop("image_index", None)
        try:
            image = pick_image(images, index)
        except ToolArgumentError as e:
            return Observation.failure(f"{self.name}: {e}")
        text, out_images, error = self.request(arguments, [image])
        if error:
            return Observation.failure(error)
        if out_images:
            which = len(images) - 1 if index is None else index
            text = f"{text} (from image {which}; this is image {len(images)})"
        return Observation(text=text, images=out_images)

    def request(self, arguments: dict, images: list[Image.Image]) -> tuple[str, list[Image.Image], str | None]:
        """(text, images, error); error None on success."""
        deadline = time.monotonic() + self.timeout_s
        try:
            body = json.dumps({"arguments": arguments, "images": [encode_image(im) for im in images]}).encode()
        except (TypeError, ValueError) as e:
            return "", [], f"{self.name}: arguments could not be sent: {e}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.attempts += 1
            status, reply = self._post(body, left)
            if status == 200:
                try:
                    images = [decode_image(im) for im in reply.get("images", [])]
                    return reply.get("text", ""), images, reply.get("error")
                except (ValueError, AttributeError) as e:
                    return "", [], f"{self.name}: the service sent a reply that could not be read: {e}"
            last = reply.get("error", "") if isinstance(reply, dict) else str(reply)
            if status == "timeout":
                return "", [], f"{self.name}: no reply within {self.timeout_s:g}s"
            if isinstance(status, int) and 400 <= status < 500:
                return "", [], f"{self.name}: {last}"
            if attempt < self.retries:  # the client's own schedule: Retry-After (whole seconds) is for plainer clients
                time.sleep(max(0.0, min(self.backoff_s * 2 ** attempt, deadline - time.monotonic())))
        return "", [], f"{self.name}: service unavailable after {self.retries + 1} attempt(s): {last}"

    def _post(self, body: bytes, timeout: float) -> tuple[int | str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + "/call", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                reply = json.loads(e.read())
            except (json.JSONDecodeError, OSError):
                reply = {"error": f"HTTP {e.code}"}
            return e.code, reply
        except TimeoutError:
            return "timeout", {}
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                return "timeout", {}
            return "connection", {"error": f"cannot reach {self.url}: {e.reason}"}
        except (ConnectionError, OSError) as e:  # reset mid-reply, refused
            return "connection", {"error": f"cannot reach {self.url}: {e}"}
        except json.JSONDecodeError as e:
            return "connection", {"error": f"the service's reply is not JSON: {e}"}


def check_services(services: list[ServiceConfig], timeout_s: float = 5.0) -> dict[str, dict]:
    """Health of each service, for the start of training: name -> {"ok", "url", "health" or "error", "ms"}.

    Also checks that each service serves the tool its config names (a detect URL in the segment entry is an
    error, not a run of wrong observations).
    """
    report: dict[str, dict] = {}
    for service in services:
        started = time.monotonic()
        entry: dict[str, Any] = {"ok": False, "url": service.url}
        token = os.environ.get(service.token_env) if service.token_env else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            if service.token_env and not token:
                raise ValueError(f"token_env {service.token_env} is not set in the environment")
            request = urllib.request.Request(service.url.rstrip("/") + "/health", headers=headers)
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                health = json.loads(response.read())
            if not isinstance(health, dict):
                raise ValueError("the reply is not an rlvr tool service's")
            entry["health"] = health
            if health.get("tool") != service.name:
                entry["error"] = f"{service.url} serves tool {health.get('tool')!r}, not {service.name!r}"
            elif not health.get("ready"):
                entry["error"] = f"{service.url} is not ready"
            else:
                entry["ok"] = True
        except urllib.error.HTTPError as e:
            entry["error"] = f"{service.url}/health answered HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            entry["error"] = f"cannot reach {service.url}/health: {getattr(e, 'reason', e)}"
        except ValueError as e:  # no token, not a URL, not JSON
            entry["error"] = f"{service.url}/health: {e}"
        entry["ms"] = round(1000 * (time.monotonic() - started), 1)
        report[service.name] = entry
    return report


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr.agent.services", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", required=True, help="detect, segment or ocr")
    parser.add_argument("--model", help="model folder or hub id (detect: Grounding DINO; segment: SAM)")
    parser.add_argument("--tiny", action="store_true", help="a random-weight model (detect, segment): a smoke run")
    parser.add_argument("--host", default="127.0.0.1", help="bind address; 127.0.0.1 unless the network needs it")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--max-concurrency", type=int, default=1, help="calls run at once; more get 503")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--token-env", help="environment variable holding a shared token clients must send")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from rlvr.agent import service_models

    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        print(f"error: --token-env {args.token_env}: the variable is not set", file=sys.stderr)
        return 2
    try:
        if args.tiny:
            args.model = service_models.make_tiny(args.tool)
        if not args.model and args.tool != "ocr":
            raise ValueError("--model is required (or --tiny for a random-weight model)")
        model = service_models.load_model(args.tool, args.model or "", device=args.device)
        server = ToolServer(model, (args.host, args.port), args.max_concurrency, args.model or "", token)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logger.warning("serving on %s without a token: anyone on that network can call it (--token-env)", args.host)
    print(f"serving {args.tool} ({args.model}) at {server.url}, max {args.max_concurrency} in flight", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
