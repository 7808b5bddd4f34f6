"""The VLM client of the synthesis stages: one call shape, three backends.

A stage builds ``ChatRequest``s (OpenAI chat messages whose image parts hold a PIL image or
a path) and calls ``client.complete(requests)``: ``n`` texts per request, in order, ``None``
for a sample the backend could not produce. Nothing raises out of ``complete``: a failure is
logged (the first few of each reason at WARNING, the rest at DEBUG) and counted per lost
sample in ``client.failures`` by reason, so a stage reports what it lost and goes on. The
call shape (``ChatRequest``, ``VLMClient``) is ``rlvr.synth.chat``'s, re-exported here.

- ``OpenAIClient``: ``POST {base_url}/chat/completions`` on an OpenAI-compatible server (vLLM,
  SGLang, ``transformers serve``, hosted APIs); images as PNG data URLs; a thread pool over
  requests; retries with exponential backoff on connection errors, 429 and 5xx (never on
  other 4xx, nor on a timeout, which would spend the server's time again); an on-disk cache.
- ``EngineClient``: rlvr's own rollout engine in this process (``rollout.engine`` hf or vllm).
- ``ScriptedClient``: canned or computed replies, for tests.

The cache: one JSON file per request under ``cache_dir``, named by the sha256 of the request's
canonical JSON (model, messages with each image as the sha256 of its mode, size and pixels,
n, temperature, max_tokens, seed, extra_body), written atomically; only complete replies are
stored. Greedy (temperature 0) and seeded requests are cached; sampled requests without a
seed are not, since two of them are meant as independent draws and a cache would make the
second a copy of the first: give solver requests a seed and a rerun answers them from the
cache. The base URL is not in the key (a server that moves keeps its cache; change ``model``
or the folder when the weights behind a name change). The API key is read from the
environment variable ``api_key_env`` names and never written to the cache or a log.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from rlvr.files import atomic_write
from rlvr.synth.chat import ChatRequest, RequestError, VLMClient, data_url, image_digest, normalise, slots, with_images

__all__ = ["BACKENDS", "ChatRequest", "EngineClient", "OpenAIClient", "RequestError", "ScriptedClient", "VLMClient",
           "make_client"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # part of every cache key: bump when the key's meaning changes


class OpenAIClient(VLMClient):
    """An OpenAI-compatible chat completions endpoint, ``base_url`` ending in ``/v1`` as usual
    (``http://127.0.0.1:8000/v1`` for ``vllm serve MODEL``). ``api_key_env``: the environment
    variable holding the key (``api_key`` takes the value itself, for code that has it).
    ``extra_body``: more request fields, e.g. ``{"top_p": 0.95}`` or vLLM's
    ``{"chat_template_kwargs": {"enable_thinking": false}}`` (part of the cache key)."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 120.0, cache_dir: str | None = None,
                 api_key_env: str | None = None, extra_body: dict | None = None):
        super().__init__()
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError("model is empty: give the name the server serves (vLLM: the path or --served-model-name)")
        if concurrency < 1 or retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError(f"concurrency={concurrency} must be >= 1, retries={retries} >= 0, backoff_s={backoff_s} "
                             f">= 0 and timeout_s={timeout_s} > 0")
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"api_key_env={api_key_env!r}: that environment variable is not set or empty; "
                                 f"export {api_key_env}=... before the run (keys never go into configs)")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.retries = model, concurrency, retries
        self.backoff_s, self.timeout_s, self.cache_dir = backoff_s, timeout_s, cache_dir
        self.extra_body = dict(extra_body or {})
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._jitter = random.Random()
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:  # no key in it
        return f"OpenAIClient({self.url!r}, model={self.model!r})"

    def _complete(self, requests: list[ChatRequest]) -> list[list[str | None]]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, range(len(requests)), requests))

    def _one(self, index: int, request: ChatRequest) -> list[str | None]:
        try:
            return self._ask(index, request)
        except Exception as e:  # e.g. an extra_body JSON cannot encode: this request is lost, not the batch
            return self._lost(index, request, "backend_error", f"{type(e).__name__}: {e}")

    def _ask(self, index: int, request: ChatRequest) -> list[str | None]:
        try:
            messages, images = normalise(request)
        except RequestError as e:
            return self._lost(index, request, "bad_request", str(e))
        key = self.cache_key(request, messages, images)
        cached = self._read_cache(key, request.n)
        if cached is not None:
            with self._lock:
                self.stats["cache_hits"] += 1
            return cached
        body = {"model": self.model, "n": request.n, "temperature": float(request.temperature),
                "max_tokens": request.max_tokens, **self.extra_body,
                "messages": with_images(messages, lambda k: {"type": "image_url",
                                                              "image_url": {"url": data_url(images[k])}})}
        if request.seed is not None:
            body["seed"] = request.seed
        reply, reason, detail = self._post(json.dumps(body).encode("utf-8"))
        if reply is None:
            return self._lost(index, request, reason, detail)
        texts, why = _texts(reply, request.n)
        missing = sum(t is None for t in texts)
        if missing:
            self._lost(index, request, why[0], why[1], count=missing)
        elif key is not None:
            self._write_cache(key, texts)
        return texts

    def cache_key(self, request: ChatRequest, messages: list[dict], images: list[Image.Image]) -> str | None:
        """The request's cache file name, or None when it is not cached (no cache, or unseeded sampling)."""
        if self.cache_dir is None or (request.temperature > 0 and request.seed is None):
            return None
        canonical = {"version": CACHE_VERSION, "model": self.model, "n": request.n,
                     "temperature": float(request.temperature), "max_tokens": request.max_tokens,
                     "seed": request.seed, "extra_body": self.extra_body,
                     "messages": with_images(messages, lambda k: {"type": "image", "sha256": image_digest(images[k])})}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, key[:2], key + ".json")

    def _read_cache(self, key: str | None, n: int) -> list[str] | None:
        if key is None or not os.path.exists(self._cache_path(key)):
            return None
        try:
            with open(self._cache_path(key), encoding="utf-8") as f:
                texts = json.load(f)["texts"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: cache file %s unreadable (%s); asking the server again", self.name,
                        self._cache_path(key), e)
            return None
        ok = isinstance(texts, list) and len(texts) == n and all(isinstance(t, str) for t in texts)
        return texts if ok else None

    def _write_cache(self, key: str, texts: list[str]) -> None:
        path = self._cache_path(key)
        try:
            with self._cache_lock:  # one writer at a time: atomic_write's temporary name is per process
                os.makedirs(os.path.dirname(path), exist_ok=True)
                atomic_write(path, json.dumps({"model": self.model, "texts": texts}))
        except OSError as e:
            log.warning("%s: cannot write cache file %s: %s", self.name, path, e)

    def _post(self, body: bytes) -> tuple[Any, str, str]:
        """(reply JSON, "", "") or (None, reason, detail), after the retries it deserves."""
        for attempt in range(self.retries + 1):
            wait = self.backoff_s * 2**attempt * self._jitter.uniform(1.0, 1.25)
            request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8")), "", ""
            except urllib.error.HTTPError as e:
                reason, detail = f"http_{e.code}", f"HTTP {e.code} from {self.url}: {_excerpt(e)}"
                retry = e.code == 429 or e.code >= 500
                wait = max(wait, _retry_after(e.headers.get("Retry-After")))
            except TimeoutError:
                return None, "timeout", f"no reply from {self.url} within timeout_s={self.timeout_s}"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    return None, "timeout", f"no connection to {self.url} within timeout_s={self.timeout_s}"
                reason, detail, retry = "connection", f"cannot reach {self.url}: {e.reason}", True
            except (OSError, http.client.HTTPException) as e:  # reset, refused mid-reply, bad status line
                reason, detail, retry = "connection", f"{self.url}: {type(e).__name__}: {e}", True
            except (UnicodeDecodeError, ValueError) as e:
                return None, "bad_reply", f"{self.url} replied with something that is not JSON: {e}"
            if not retry or attempt == self.retries:
                suffix = f" (after {attempt} retries)" if attempt else ""
                return None, reason, detail + suffix
            with self._lock:
                self.stats["retries"] += 1
            time.sleep(wait)
        raise AssertionError("unreachable")


def _excerpt(error: urllib.error.HTTPError, limit: int = 300) -> str:
    try:
        text = error.read().decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return (text[:limit] + "...") if len(text) > limit else text or str(error.reason)


def _retry_after(value: str | None, cap_s: float = 60.0) -> float:
    try:
        return min(max(float(value), 0.0), cap_s) if value else 0.0
    except ValueError:  # an HTTP date: the exponential backoff decides
        return 0.0


def _texts(reply: Any, n: int) -> tuple[list[str | None], tuple[str, str]]:
    """The n choices' texts by their index, and (reason, detail) for the ones missing."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list):
        return [None] * n, ("bad_reply", f"the reply has no 'choices' list: {str(reply)[:200]}")
    texts: list[str | None] = [None] * n
    for position, choice in enumerate(choices):
        index = choice.get("index", position) if isinstance(choice, dict) else None
        if isinstance(index, int) and 0 <= index < n:
            content = (choice.get("message") or {}).get("content")
            texts[index] = content if isinstance(content, str) else None
    if len(choices) < n:
        return texts, ("fewer_choices", f"asked for n={n} samples, got {len(choices)} (does the server support n?)")
    return texts, ("no_content", "a choice had no text content (a refusal, a tool call, or only reasoning)")


class EngineClient(VLMClient):
    """rlvr's rollout engine in this process: ``engine`` hf (transformers generate on the model
    loaded here) or vllm. ``overrides``: more ``key=value`` settings of the training config
    (``rollout.micro_batch_size=8``, ``data.max_pixels=...``, ``rollout.vllm.*``). The model's
    processor applies its chat template; greedy when temperature is 0; an unseeded sampled
    request draws its seed from ``seed``'s stream, so a client's samples are reproducible."""

    name = "engine"

    def __init__(self, model_path: str, engine: str = "hf", dtype: str = "auto", device: str | None = None,
                 seed: int = 0, overrides: list[str] | tuple = ()):
        super().__init__()
        import torch

        from rlvr.config import ConfigError, load_config
        from rlvr.models import load_model, load_processor, stop_token_ids
        from rlvr.rollout import make_engine

        cfg = load_config(None, list(overrides))
        cfg.model.name_or_path, cfg.model.dtype, cfg.rollout.engine = model_path, dtype, engine
        problems = cfg.model.problems() + cfg.rollout.problems()
        if problems:
            raise ConfigError("EngineClient: " + " ".join(problems))
        self.cfg, self._rng = cfg, random.Random(seed)
        try:
            self.processor = load_processor(model_path, cfg.data.min_pixels, cfg.data.max_pixels)
            model = None
            if engine == "hf":
                device = device or ("cuda" if torch.cuda.is_available() else "cpu")
                model = load_model(model_path, dtype, cfg.model.attn_implementation, cfg.model.trust_remote_code)
                model.to(device).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"EngineClient: cannot load the model at {model_path!r} (a local folder or hub id "
                             f"with a processor): {e}") from e
        stops = stop_token_ids(self.processor, model or _generation_config_holder(model_path))
        self.engine = make_engine(cfg, stops, self.processor.tokenizer.pad_token_id, policy=model)

    def encode(self, messages: list[dict], images: list[Image.Image]):
        """One prompt as ``rlvr.batch.PromptInputs``, as ``rlvr.batch.encode_prompt`` processes a row."""
        import torch

        from rlvr.batch import PromptInputs

        template = with_images(messages, lambda k: {"type": "image"})
        text = self.processor.apply_chat_template(template, add_generation_prompt=True, tokenize=False)
        enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        ids = enc["input_ids"][0]
        return PromptInputs(input_ids=ids, mm_token_type_ids=enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc
                            else torch.zeros_like(ids), pixel_values=enc.get("pixel_values"),
                            image_grid_thw=enc.get("image_grid_thw"), images=images or None)

    def _complete(self, requests: list[ChatRequest]) -> list[list[str | None]]:
        out: list[list[str | None]] = [[None] * slots(r) for r in requests]
        groups: dict[tuple, list] = collections.defaultdict(list)  # one generate call per sampling setting
        for i, request in enumerate(requests):
            try:
                prompt = self.encode(*normalise(request))
            except Exception as e:  # a malformed request, or one the processor refuses
                self._lost(i, request, "bad_request", f"{type(e).__name__}: {e}")
                continue
            seed = request.seed if request.seed is not None else self._rng.randrange(2**62)
            groups[(request.n, float(request.temperature), request.max_tokens)].append((i, prompt, seed))
        for (n, temperature, max_tokens), members in groups.items():
            # greedy: one response repeated n times (the n would be equal); the temperature is then
            # ignored, and 1.0 keeps the sampler's arithmetic away from a division by 0
            drawn = 1 if temperature == 0 else n
            settings = dataclasses.replace(self.cfg.rollout, group_size=drawn, max_new_tokens=max_tokens,
                                           temperature=temperature or 1.0)
            try:
                responses = self.engine.generate([p for _, p, _ in members], [s for _, _, s in members],
                                                 settings=settings, greedy=temperature == 0)
            except Exception as e:
                for i, _, _ in members:
                    self._lost(i, requests[i], "engine_error", f"{type(e).__name__}: {e}")
                continue
            texts = self.processor.tokenizer.batch_decode([r.token_ids for r in responses], skip_special_tokens=True)
            for k, (i, _, _) in enumerate(members):  # responses are prompt-major: ``drawn`` per prompt
                out[i] = texts[k * drawn:(k + 1) * drawn] * (n // drawn)
        return out


def _generation_config_holder(model_path: str):
    """What ``stop_token_ids`` reads from a model (its generation config), without loading the weights."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    try:
        return SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model_path))
    except OSError:  # no generation_config.json: the tokenizer's EOS and end-of-turn tokens stop
        return SimpleNamespace(generation_config=GenerationConfig())


class ScriptedClient(VLMClient):
    """Replies from a script, for tests. ``responder``: a function ``ChatRequest -> list of n
    texts`` (a ``None`` in it is a lost sample; an exception loses the request), or a list of
    canned replies used in order, one per request: a string (every sample) or a list of n.
    ``requests`` records every request received."""

    name = "scripted"

    def __init__(self, responder: Callable[[ChatRequest], list] | list):
        super().__init__()
        if not callable(responder) and not isinstance(responder, list):
            raise ValueError("ScriptedClient needs a function ChatRequest -> list[str] or a list of canned replies")
        self.responder = responder
        self.requests: list[ChatRequest] = []
        self._next = 0

    def _reply(self, request: ChatRequest) -> Any:
        if callable(self.responder):
            return self.responder(request)
        if self._next >= len(self.responder):
            raise LookupError(f"the script has {len(self.responder)} replies and this is request {self._next + 1}")
        self._next += 1
        reply = self.responder[self._next - 1]
        return [reply] * request.n if isinstance(reply, str) else reply

    def _complete(self, requests: list[ChatRequest]) -> list[list[str | None]]:
        out = []
        for i, request in enumerate(requests):
            self.requests.append(request)
            try:
                normalise(request)
            except RequestError as e:
                out.append(self._lost(i, request, "bad_request", str(e)))
                continue
            try:
                texts = self._reply(request)
            except Exception as e:  # the script's own error: this request's samples are lost
                out.append(self._lost(i, request, "scripted_error", f"{type(e).__name__}: {e}"))
                continue
            if not isinstance(texts, list) or len(texts) != request.n:
                detail = f"the script gave {str(texts)[:80]} for n={request.n}"
                out.append(self._lost(i, request, "scripted_error", detail))
                continue
            texts = [t if isinstance(t, str) else None for t in texts]
            if None in texts:
                self._lost(i, request, "scripted_none", "the script gave None", count=texts.count(None))
            out.append(texts)
        return out


BACKENDS = {"openai": OpenAIClient, "engine": EngineClient, "scripted": ScriptedClient}


def make_client(backend: str, **settings: Any) -> VLMClient:
    """The client ``backend`` names (openai | engine | scripted), built with ``settings``."""
    import inspect

    if backend not in BACKENDS:
        raise ValueError(f"VLM backend {backend!r} is not one of {', '.join(BACKENDS)}")
    cls = BACKENDS[backend]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"the {backend} VLM backend takes {', '.join(accepted)}; not {', '.join(unknown)}")
    return cls(**settings)
