"""The call shape of the synthesis stages' VLM clients (``rlvr.synth.client`` has the backends).

``ChatRequest``: OpenAI chat messages whose image parts hold a PIL image or a path, with
``n``, temperature, max_tokens and seed. ``normalise`` checks a request and opens its images
(RGB); ``with_images`` rewrites the image parts for a backend (a data URL for an HTTP server,
a placeholder for a chat template, a digest for a cache key). ``VLMClient`` is the interface:
``complete(requests)`` never raises; a lost sample is ``None``, counted in ``failures`` by
reason and logged (the first few of each reason at WARNING, the rest at DEBUG).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

LOGGED_PER_REASON = 3  # failures of one reason logged at WARNING; the rest are counted (and at DEBUG)

@dataclass
class ChatRequest:
    """One chat completion: ``n`` samples of the assistant's reply to ``messages``.

    ``messages``: OpenAI chat format, ``{"role": ..., "content": str | list of parts}``; a part
    is ``{"type": "text", "text": str}`` or ``{"type": "image", "image": PIL image or path}``.
    ``temperature`` 0 is greedy; ``seed`` makes sampling reproducible (and cacheable).
    """

    messages: list[dict]
    n: int = 1
    temperature: float = 0.0
    max_tokens: int = 1024
    seed: int | None = None


class RequestError(ValueError):
    """A request that cannot be sent as it is; the message names the part and what to change."""


def slots(request: Any) -> int:
    n = getattr(request, "n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def _open_image(ref: Any) -> Image.Image:
    if isinstance(ref, Image.Image):
        image = ref
    elif isinstance(ref, (str, os.PathLike)):
        try:
            image = Image.open(ref)
            image.load()
        except (OSError, ValueError) as e:
            raise RequestError(f"image {os.fspath(ref)!r} cannot be opened: {e}") from e
    else:
        raise RequestError(f"an image part holds a {type(ref).__name__}; give a PIL image or a file path")
    return image if image.mode == "RGB" else image.convert("RGB")


def normalise(request: ChatRequest) -> tuple[list[dict], list[Image.Image]]:
    """``request``'s messages with each image part as ``{"type": "image", "image": k}`` (k: its
    index in the returned images, opened as RGB). Raises ``RequestError`` on a malformed request."""
    if not isinstance(request, ChatRequest):
        raise RequestError(f"got a {type(request).__name__}, not a ChatRequest")
    if slots(request) != request.n:
        raise RequestError(f"n={request.n!r}: the number of samples must be an integer >= 1")
    if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
        raise RequestError(f"max_tokens={request.max_tokens!r} must be an integer >= 1")
    if not isinstance(request.temperature, (int, float)) or request.temperature < 0:
        raise RequestError(f"temperature={request.temperature!r} must be a number >= 0 (0: greedy)")
    if request.seed is not None and (not isinstance(request.seed, int) or isinstance(request.seed, bool)):
        raise RequestError(f"seed={request.seed!r} must be an integer or None")
    if not isinstance(request.messages, list) or not request.messages:
        raise RequestError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    messages, images = [], []
    for m, message in enumerate(request.messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"message {m} is not a dict with a 'role'")
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"message {m}: content must be a string or a list of parts")
        parts = []
        for p, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                images.append(_open_image(part.get("image")))
                parts.append({"type": "image", "image": len(images) - 1})
            else:
                raise RequestError(f"message {m}, part {p}: expected {{'type': 'text', 'text': str}} or "
                                   f"{{'type': 'image', 'image': PIL image or path}}, got {str(part)[:80]}")
        messages.append({"role": message["role"], "content": parts})
    return messages, images


def with_images(messages: list[dict], part: Callable[[int], dict]) -> list[dict]:
    """``messages`` (as ``normalise`` returns them) with image part k replaced by ``part(k)``."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
             [part(p["image"]) if p["type"] == "image" else p for p in m["content"]]} for m in messages]


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size and pixels: the same for the same picture whatever its encoding."""
    h = hashlib.sha256(f"{image.mode} {image.size[0]}x{image.size[1]} ".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def data_url(image: Image.Image) -> str:
    """The image as a ``data:image/png;base64,...`` URL (lossless, as OpenAI-compatible servers accept)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class VLMClient(ABC):
    """``complete(requests)`` -> ``n`` texts per request, in order; ``None`` where a sample was lost.

    ``failures``: lost samples by reason. ``stats``: what the backend did (requests, samples,
    and backend-specific counts such as cache hits and retries).
    """

    name = "vlm"

    def __init__(self) -> None:
        self.failures: collections.Counter = collections.Counter()
        self.stats: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def complete(self, requests: list[ChatRequest]) -> list[list[str | None]]:
        requests = list(requests)
        with self._lock:
            self.stats["requests"] += len(requests)
            self.stats["samples"] += sum(slots(r) for r in requests)
        try:
            return self._complete(requests)
        except Exception as e:  # a bug or an engine crash: every sample of the call is lost, none raises
            return [self._lost(i, r, "backend_error", f"{type(e).__name__}: {e}") for i, r in enumerate(requests)]

    @abstractmethod
    def _complete(self, requests: list[ChatRequest]) -> list[list[str | None]]:
        """The backend's work; may call ``_lost`` for single requests."""

    def _lost(self, index: int, request: Any, reason: str, detail: str, count: int | None = None) -> list[None]:
        """Count and log ``count`` (default: all) samples of request ``index`` as lost; their slots."""
        total = slots(request)
        count = total if count is None else count
        with self._lock:
            self.failures[reason] += count
            seen = self.failures[reason] - count  # samples of this reason before this one
            first = seen < LOGGED_PER_REASON
        last = first and seen + count >= LOGGED_PER_REASON
        more = " (further failures of this reason are counted, not logged)" if last else ""
        log.log(logging.WARNING if first else logging.DEBUG, "%s: request %d: %d of %d sample(s) lost (%s): %s%s",
                self.name, index, count, total, reason, detail, more)
        return [None] * total
