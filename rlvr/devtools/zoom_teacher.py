"""The tools demo's scripted teacher: ``ZoomSolver`` zooms into the named square and reads its colour.

``python -m rlvr.agent.teacher --teacher scripted`` uses it (``scripted_client``) on rows of
``rlvr.devtools.make_tools_demo_data``, which carry the square's ``target_box``.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from rlvr.agent.calls import CALL_CLOSE
from rlvr.synth.chat import ChatRequest


class ZoomSolver:
    """The tools demo's teacher (``rlvr.devtools.make_tools_demo_data``), a ``ScriptedClient`` responder.

    Turn 1: zoom into the row's ``target_box`` by 4 (the one fixed call per quadrant; it knows
    where the square is, as a person reading the question does, not what colour it has). A row
    whose ``zooms`` (prompt key -> count, default 1) is 2 makes it look again: the same call once
    more after the first image (a teacher less frugal than the run's budget). Then the last zoomed
    image's pixels vote for their nearest digit colour (within ``max_dist``); the winner is the
    answer, written for ``answer_extraction`` ("7", or "\\boxed{7}"). An error observation (no
    image) makes it call again. No square colour found: "I cannot tell."
    """

    def __init__(self, boxes: dict[str, list], digits: dict[int, tuple], answer_extraction: str = "last_number",
                 max_dist: float = 60.0, zooms: dict[str, int] | None = None):
        self.boxes, self.max_dist, self.zooms = boxes, max_dist, zooms or {}
        self.digits = sorted(digits)
        self.palette = np.array([digits[d] for d in self.digits], dtype=np.float32)  # [D, 3]
        self.answer_format = "\\boxed{{{}}}" if answer_extraction == "boxed" else "{}"

    @staticmethod
    def key(messages: list[dict]) -> str:
        """A prompt's identity: its system turn(s) and first user turn, image parts as their paths
        (the same for every request of a trajectory)."""
        prompt = [m for m in messages if m["role"] == "system"] + [next(m for m in messages if m["role"] == "user")]
        return json.dumps(prompt, default=lambda v: f"<{type(v).__name__}>", sort_keys=True)

    def call_text(self, box: list) -> str:
        return f"<tool_call>\n{json.dumps({'name': 'zoom_in', 'arguments': {'bbox_2d': box, 'factor': 4}})}\n{CALL_CLOSE}"

    def read_digit(self, image: Image.Image) -> int | None:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)  # [P, 1, 3]
        dist = np.linalg.norm(pixels - self.palette[None], axis=-1)  # [P, D]
        nearest = dist.argmin(axis=1)  # [P]
        votes = np.bincount(nearest[dist.min(axis=1) <= self.max_dist], minlength=len(self.digits))  # [D]
        return self.digits[int(votes.argmax())] if votes.max() > 0 else None

    def __call__(self, request: ChatRequest) -> list[str]:
        key = self.key(request.messages)
        seen = []  # the images of the observations so far (user turns after the first assistant turn)
        started = False
        for message in request.messages:
            started = started or message["role"] == "assistant"
            if started and message["role"] == "user" and isinstance(message["content"], list):
                seen += [p["image"] for p in message["content"] if p.get("type") == "image"]
        last = request.messages[-1]
        fresh = last["role"] == "user" and started and isinstance(last["content"], list) and \
            any(p.get("type") == "image" for p in last["content"])
        if fresh and len(seen) >= self.zooms.get(key, 1):
            image = seen[-1]
            digit = self.read_digit(image if isinstance(image, Image.Image) else Image.open(image))
            text = "I cannot tell." if digit is None else self.answer_format.format(digit)
        else:
            text = self.call_text(self.boxes[key])
        return [text] * request.n


def scripted_client(tasks, teacher, cfg):
    """A ``ScriptedClient`` answering as ``ZoomSolver`` for ``tasks`` ((row, Example) pairs with a
    ``target_box``), keyed by the prompts ``teacher`` sends."""
    from rlvr.devtools.make_demo_data import COLOURS
    from rlvr.devtools.make_tools_demo_data import MAX_DIGITS
    from rlvr.synth.client import ScriptedClient

    boxes, zooms = {}, {}
    for row, example in tasks:
        if not (isinstance(row.get("target_box"), list) and len(row["target_box"]) == 4):
            raise SystemExit(f"teacher: --teacher scripted needs a target_box [x1, y1, x2, y2] on every row; "
                             f"row {example.id} has {row.get('target_box')!r} (rows of make_tools_demo_data have it)")
        key = ZoomSolver.key(teacher.prompt_messages(example))
        boxes[key], zooms[key] = row["target_box"], row.get("teacher_zooms", 1)
        if zooms[key] not in (1, 2):
            raise SystemExit(f"teacher: --teacher scripted: row {example.id} has teacher_zooms "
                             f"{row['teacher_zooms']!r}; it must be 1 or 2")
    return ScriptedClient(ZoomSolver(boxes, {d: COLOURS[d] for d in range(MAX_DIGITS)}, cfg.reward.answer_extraction,
                                     zooms=zooms))
