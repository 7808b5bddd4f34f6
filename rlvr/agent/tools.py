"""The model's tools: the interface, the registry, and the in-process image tools.

A tool takes JSON arguments (checked against its JSON-schema ``parameters``) and the
conversation's images so far, and returns an ``Observation``: text and/or images for the
model. Nothing a tool does is raised into training: bad arguments, an exception inside the
tool and a call over the time limit all come back as an error observation the model reads,
and are counted per tool (``ToolRegistry.stats``).

Coordinates: every built-in image tool takes Qwen's 0-1000 normalised coordinates
(``x`` from the left, ``y`` from the top, 1000 = the far edge) of the image it acts on. The
model sees images resized by the processor's pixel budget, so it cannot know the original's
pixel coordinates; 0-1000 is the same point at any resolution (Qwen2-VL's and Qwen3-VL's
grounding convention). ``image_index`` picks the image among the conversation's images (the prompt's,
then each observation's, in order); default: the last one.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

COORD_MAX = 1000  # the 0-1000 convention
MARK_COLOUR = (255, 0, 0)
MIN_SIDE = 4  # crops smaller than this (pixels) are refused: nothing to see, and processors reject them
MAX_ASPECT = 100  # Qwen's processors refuse images with an aspect ratio over 200


@dataclass
class Observation:
    """What a tool call gives back to the model: ``text`` (always shown) and ``images``. ``error``
    is set when the call failed (bad arguments, the tool raised, a timeout); the text says what."""

    text: str
    images: list = field(default_factory=list)  # PIL images, in the order they are shown
    error: str | None = None
    status: str = "ok"  # ok | error (bad arguments, tool failed) | timeout | invalid (unparseable call, unknown tool)

    @classmethod
    def failure(cls, message: str, status: str = "error") -> Observation:
        return cls(text=f"Error: {message}", images=[], error=message, status=status)


@dataclass
class ToolCall:
    """A parsed call: the tool's ``name`` and its ``arguments`` (a JSON object)."""
    name: str
    arguments: dict


@dataclass
class CallError:
    """Text that looked like a tool call but is not a valid one; ``reason`` is shown to the model."""
    reason: str


class Tool:
    """A tool the model can call. Subclasses set ``name``, ``description``, ``parameters``
    (a JSON schema of type object) and implement ``call``; arguments arrive validated,
    with the schema's defaults filled in."""

    name: str = ""
    description: str = ""
    parameters: dict = {"type": "object", "properties": {}}

    def call(self, arguments: dict, images: list) -> Observation:
        raise NotImplementedError

    def schema(self) -> dict:
        """The OpenAI/Qwen function format, as chat templates list tools."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


# --- argument validation: the JSON-schema subset tools use -------------------------------------

_TYPES = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
          "array": "a list", "object": "an object"}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"string": str, "boolean": bool, "array": list, "object": dict}[kind])


def _check_value(value: Any, spec: dict, where: str) -> str | None:
    kind = spec.get("type")
    if kind and not _type_ok(value, kind):
        return f"{where} must be {_TYPES[kind]}, got {json_repr(value)}"
    if "enum" in spec and value not in spec["enum"]:
        return f"{where} must be one of {spec['enum']}, got {json_repr(value)}"
    if kind in ("integer", "number"):
        if "minimum" in spec and value < spec["minimum"]:
            return f"{where} must be >= {spec['minimum']}, got {json_repr(value)}"
        if "maximum" in spec and value > spec["maximum"]:
            return f"{where} must be <= {spec['maximum']}, got {json_repr(value)}"
    if kind == "array":
        n_min, n_max = spec.get("minItems"), spec.get("maxItems")
        if (n_min is not None and len(value) < n_min) or (n_max is not None and len(value) > n_max):
            count = n_min if n_min == n_max else f"{n_min} to {n_max}"
            return f"{where} must be a list of {count} items, got {len(value)}"
        for i, item in enumerate(value):
            problem = _check_value(item, spec.get("items", {}), f"{where}[{i}]")
            if problem:
                return problem
    return None


def json_repr(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_arguments(arguments: Any, parameters: dict) -> tuple[dict, str | None]:
    """``arguments`` checked against ``parameters``; returns (arguments with defaults, problem or None).

    Problems name the argument and what was expected, e.g. ``argument 'y' must be <= 1000, got 1200``.
    Integers given as 3.0 become 3. Unknown arguments are refused (a typo would otherwise be ignored).
    """
    if not isinstance(arguments, dict):
        return {}, f"arguments must be a JSON object, got {json_repr(arguments)}"
    props = parameters.get("properties", {})
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        return {}, f"unknown argument {unknown[0]!r}; this tool takes {sorted(props)}"
    missing = [name for name in parameters.get("required", []) if name not in arguments]
    if missing:
        return {}, f"missing required argument {missing[0]!r} ({props[missing[0]].get('description', '')})".replace(" ()", "")
    out = {}
    for name, spec in props.items():
        if name not in arguments:
            if "default" in spec:
                out[name] = spec["default"]
            continue
        problem = _check_value(arguments[name], spec, f"argument {name!r}")
        if problem:
            return {}, problem
        value = arguments[name]
        out[name] = int(value) if spec.get("type") == "integer" else value
    return out, None


# --- the registry --------------------------------------------------------------------------------

@dataclass
class ToolStats:
    calls: int = 0
    errors: int = 0  # bad arguments and exceptions (timeouts are counted apart)
    timeouts: int = 0


INVALID = "<invalid>"  # the stats key of calls that named no known tool or were not parseable


class ToolRegistry:
    """The tools of a run by name; ``run`` executes a parsed call and never raises."""

    def __init__(self, tools: list[Tool] | None = None):
        self.tools: dict[str, Tool] = {}
        self.stats: dict[str, ToolStats] = {}
        self._lock = threading.Lock()
        for tool in tools or []:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if not tool.name or tool.name in self.tools:
            raise ValueError(f"tool name {tool.name!r} is empty or already registered ({sorted(self.tools)})")
        if tool.parameters.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of type 'object'")
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict]:
        """Every tool in the OpenAI/Qwen function format, in registration order (for the prompt)."""
        return [tool.schema() for tool in self.tools.values()]

    def _count(self, name: str, outcome: str | None) -> None:
        with self._lock:
            stats = self.stats.setdefault(name, ToolStats())
            stats.calls += 1
            stats.errors += outcome == "error"
            stats.timeouts += outcome == "timeout"

    def run(self, call: ToolCall | CallError, images: list, time_limit_s: float = 10.0) -> Observation:
        """The observation of ``call`` on the conversation's ``images``; errors and timeouts as text.

        The tool runs in a daemon worker thread; past ``time_limit_s`` the call returns a timeout
        observation at once (the thread is abandoned: in-process tools are pure PIL and finish;
        HTTP tools have their own client timeouts below this limit).
        """
        tool = None if isinstance(call, CallError) else self.get(call.name)
        if tool is None:
            self._count(INVALID, "error")
            return Observation.failure(call.reason if isinstance(call, CallError) else
                                       f"unknown tool {call.name!r}; available tools: {self.names()}", "invalid")
        arguments, problem = validate_arguments(call.arguments, tool.parameters)
        if problem:
            self._count(tool.name, "error")
            return Observation.failure(f"{tool.name}: {problem}")
        result: list = []

        def work():
            try:
                result.append(tool.call(arguments, list(images)))
            except Exception as e:  # the tool's bug or its refusal, shown to the model
                result.append(Observation.failure(f"{tool.name} failed: {type(e).__name__}: {e}"))

        worker = threading.Thread(target=work, name=f"tool-{tool.name}", daemon=True)
        worker.start()
        worker.join(time_limit_s)
        if worker.is_alive() or not result:
            self._count(tool.name, "timeout")
            return Observation.failure(f"{tool.name} timed out after {time_limit_s:g} s", "timeout")
        observation = result[0]
        if not isinstance(observation, Observation):
            observation = Observation.failure(f"{tool.name} returned {type(observation).__name__}, not an Observation")
        elif observation.error and observation.status == "ok":
            observation.status = "error"
        self._count(tool.name, "error" if observation.error else None)
        return observation

    def metrics(self) -> dict[str, float]:
        """``tools/<name>/calls|errors|timeouts`` so far."""
        return {f"tools/{name}/{key}": float(getattr(s, key)) for name, s in sorted(self.stats.items())
                for key in ("calls", "errors", "timeouts")}


# --- the in-process image tools ------------------------------------------------------------------

def _coord(description: str) -> dict:
    return {"type": "number", "minimum": 0, "maximum": COORD_MAX, "description": description}


IMAGE_INDEX = {"type": "integer", "minimum": 0,
               "description": "which image of the conversation (0 = the first); default: the last one"}
BBOX = {"type": "array", "items": _coord("0-1000"), "minItems": 4, "maxItems": 4,
        "description": "[x1, y1, x2, y2]: the box's left, top, right, bottom edges in 0-1000 coordinates of the image"}


def to_pixel(value: float, size: int) -> int:
    """A 0-1000 coordinate as the index of the pixel it falls in (1000: the last pixel)."""
    return min(size - 1, math.floor(value * size / COORD_MAX))


def box_pixels(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A 0-1000 box as PIL's (left, top, right, bottom) pixel box: edges floor/ceil outwards,
    so the crop covers every pixel the box touches."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ToolArgumentError(f"bbox_2d {box} is empty: need x1 < x2 and y1 < y2")
    left, top = math.floor(x1 * width / COORD_MAX), math.floor(y1 * height / COORD_MAX)
    right, bottom = math.ceil(x2 * width / COORD_MAX), math.ceil(y2 * height / COORD_MAX)
    return left, top, max(right, left + 1), max(bottom, top + 1)


class ToolArgumentError(ValueError):
    """An argument valid for the schema but not for this image (the message is for the model)."""


def pick_image(images: list, index: int | None) -> Image.Image:
    if not images:
        raise ToolArgumentError("there is no image in the conversation")
    if index is None:
        return images[-1]
    if index >= len(images):
        raise ToolArgumentError(f"image_index {index} is out of range: the conversation has {len(images)} "
                                f"image(s), indices 0 to {len(images) - 1}")
    return images[index]


class ImageTool(Tool):
    """A tool on one image of the conversation; ``apply`` returns the new image and a description.

    ``apply`` gets an RGB copy (``convert`` copies), so drawing on it never changes the conversation's image."""

    def call(self, arguments: dict, images: list) -> Observation:
        index = arguments.pop("image_index", None)
        try:
            source = pick_image(images, index)
            image, text = self.apply(source.convert("RGB"), **arguments)
        except ToolArgumentError as e:
            return Observation.failure(f"{self.name}: {e}")
        which = len(images) - 1 if index is None else index
        return Observation(text=f"{text} (from image {which}; this is image {len(images)})", images=[image])

    def apply(self, image: Image.Image, **arguments) -> tuple[Image.Image, str]:
        raise NotImplementedError


def _crop(image: Image.Image, box: list[float]) -> Image.Image:
    left, top, right, bottom = box_pixels(box, *image.size)
    w, h = right - left, bottom - top
    if min(w, h) < MIN_SIDE and min(image.size) >= MIN_SIDE:
        raise ToolArgumentError(f"bbox_2d {box} is {w}x{h} pixels; the smallest crop is {MIN_SIDE}x{MIN_SIDE}")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ToolArgumentError(f"bbox_2d {box} is {w}x{h} pixels, too thin (aspect ratio over {MAX_ASPECT})")
    return image.crop((left, top, right, bottom))


class Crop(ImageTool):
    name = "crop"
    description = "Crop a region of an image; returns the region as a new image at its original resolution."
    parameters = {"type": "object", "properties": {"bbox_2d": BBOX, "image_index": IMAGE_INDEX}, "required": ["bbox_2d"]}

    def apply(self, image, bbox_2d):
        out = _crop(image, bbox_2d)
        return out, f"Cropped region {bbox_2d}, {out.width}x{out.height} pixels"


class ZoomIn(ImageTool):
    """Crop, then upscale by ``factor`` (bicubic), capped at ``max_side`` pixels on the longer side."""

    name = "zoom_in"
    description = "Zoom into a region of an image: crop it and enlarge it by a factor, to read small details."
    parameters = {"type": "object", "properties": {
        "bbox_2d": BBOX,
        "factor": {"type": "number", "minimum": 1, "maximum": 8, "default": 2, "description": "enlargement, 1 to 8"},
        "image_index": IMAGE_INDEX}, "required": ["bbox_2d"]}

    def __init__(self, max_side: int = 1024):
        self.max_side = max_side

    def apply(self, image, bbox_2d, factor):
        region = _crop(image, bbox_2d)
        scale = min(float(factor), self.max_side / max(region.size))
        size = (max(1, round(region.width * scale)), max(1, round(region.height * scale)))
        out = region.resize(size, Image.Resampling.BICUBIC) if size != region.size else region
        return out, f"Zoomed into {bbox_2d} by {scale:g}x, {out.width}x{out.height} pixels"


def line_width(image: Image.Image) -> int:
    """Marks scale with the image: 1 pixel per 100 of the shorter side, at least 1."""
    return max(1, min(image.size) // 100)


def _span(centre: int, width: int, size: int) -> tuple[int, int]:
    """The first and last pixel of a ``width``-pixel band centred on ``centre``, inside [0, size)."""
    first = max(0, centre - (width - 1) // 2)
    return first, min(size - 1, centre + width // 2)


class DrawHorizontalLine(ImageTool):
    name = "draw_horizontal_line"
    description = "Draw a red horizontal line across an image at height y, e.g. to compare bar heights with a value."
    parameters = {"type": "object", "properties": {"y": _coord("height, 0 (top) to 1000 (bottom)"),
                                                   "image_index": IMAGE_INDEX}, "required": ["y"]}

    def apply(self, image, y):
        out = image
        first, last = _span(to_pixel(y, image.height), line_width(image), image.height)
        ImageDraw.Draw(out).rectangle((0, first, image.width - 1, last), fill=MARK_COLOUR)
        return out, f"Drew a horizontal line at y={y:g}"


class DrawVerticalLine(ImageTool):
    name = "draw_vertical_line"
    description = "Draw a red vertical line down an image at x, e.g. to read a curve's value at a point of the x axis."
    parameters = {"type": "object", "properties": {"x": _coord("position, 0 (left) to 1000 (right)"),
                                                   "image_index": IMAGE_INDEX}, "required": ["x"]}

    def apply(self, image, x):
        out = image
        first, last = _span(to_pixel(x, image.width), line_width(image), image.width)
        ImageDraw.Draw(out).rectangle((first, 0, last, image.height - 1), fill=MARK_COLOUR)
        return out, f"Drew a vertical line at x={x:g}"


class Point(ImageTool):
    """A red square marker of side ``2 r + 1`` centred on the point, r = max(1, shorter side // 50)."""

    name = "point"
    description = "Mark a point of an image with a red marker, e.g. to check which object is at a position."
    parameters = {"type": "object", "properties": {"x": _coord("0 (left) to 1000 (right)"),
                                                   "y": _coord("0 (top) to 1000 (bottom)"),
                                                   "image_index": IMAGE_INDEX}, "required": ["x", "y"]}

    def apply(self, image, x, y):
        out = image
        px, py, r = to_pixel(x, image.width), to_pixel(y, image.height), max(1, min(image.size) // 50)
        ImageDraw.Draw(out).rectangle((px - r, py - r, px + r, py + r), fill=MARK_COLOUR)
        return out, f"Marked the point ({x:g}, {y:g})"


def image_tools(max_zoom_side: int = 1024) -> list[Tool]:
    """The built-in in-process tools (``rlvr.config.tools.BUILTIN_TOOLS``), in that order."""
    return [Crop(), ZoomIn(max_zoom_side), DrawHorizontalLine(), DrawVerticalLine(), Point()]
