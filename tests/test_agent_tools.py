"""rlvr.agent.tools: the image tools' pixels by hand, argument checks, errors and timeouts as observations, counters.

Images are tiny so every pixel can be counted. 0-1000 coordinates map to pixels as
floor(v * size / 1000) (the last pixel at 1000); a box's right/bottom edges round up.
"""

import time

import pytest
from PIL import Image

from rlvr.agent.tools import (
    INVALID,
    CallError,
    Crop,
    DrawHorizontalLine,
    DrawVerticalLine,
    Observation,
    Point,
    Tool,
    ToolCall,
    ToolRegistry,
    ZoomIn,
    image_tools,
    validate_arguments,
)

RED = (255, 0, 0)


def coded(width=10, height=8) -> Image.Image:
    """Pixel (x, y) holds (10 x, 10 y, 7): a crop's origin can be read off its first pixel."""
    image = Image.new("RGB", (width, height))
    image.putdata([(10 * x, 10 * y, 7) for y in range(height) for x in range(width)])
    return image


def red_pixels(image: Image.Image) -> set[tuple[int, int]]:
    return {(x, y) for y in range(image.height) for x in range(image.width) if image.getpixel((x, y)) == RED}


def run(tool_name, arguments, images, limit=5.0):
    registry = ToolRegistry(image_tools())
    return registry.run(ToolCall(tool_name, arguments), images, limit), registry


def test_crop_box_in_0_1000_coordinates():
    # 10x8: x 100..500 -> pixels floor(1.0)=1 .. ceil(5.0)=5; y 250..750 -> floor(2.0)=2 .. ceil(6.0)=6: 4x4 from (1, 2)
    obs, _ = run("crop", {"bbox_2d": [100, 250, 500, 750]}, [coded()])
    assert obs.error is None and len(obs.images) == 1
    out = obs.images[0]
    assert out.size == (4, 4)
    assert out.getpixel((0, 0)) == (10, 20, 7) and out.getpixel((3, 3)) == (40, 50, 7)
    # edges round outwards: x 150..520 -> 1 .. ceil(5.2)=6; y 300..760 -> floor(2.4)=2 .. ceil(6.08)=7
    obs, _ = run("crop", {"bbox_2d": [150, 300, 520, 760]}, [coded()])
    assert obs.images[0].size == (5, 5) and obs.images[0].getpixel((0, 0)) == (10, 20, 7)
    assert obs.text == "Cropped region [150, 300, 520, 760], 5x5 pixels (from image 0; this is image 1)"


def test_crop_refuses_empty_tiny_and_out_of_range_boxes():
    obs, registry = run("crop", {"bbox_2d": [500, 0, 400, 1000]}, [coded()])
    assert obs.error == "crop: bbox_2d [500, 0, 400, 1000] is empty: need x1 < x2 and y1 < y2" and not obs.images
    assert obs.text == "Error: " + obs.error
    assert registry.stats["crop"].errors == 1
    # 0..200 of 10x8: pixels 0..2 wide, 0..ceil(1.6)=2 high: 2x2 is under the 4-pixel minimum
    obs, _ = run("crop", {"bbox_2d": [0, 0, 200, 200]}, [coded()])
    assert obs.error == "crop: bbox_2d [0, 0, 200, 200] is 2x2 pixels; the smallest crop is 4x4"
    obs, _ = run("crop", {"bbox_2d": [0, 0, 1200, 500]}, [coded()])
    assert obs.error == "crop: argument 'bbox_2d'[2] must be <= 1000, got 1200"


def test_zoom_in_scales_by_factor_and_caps_the_side():
    solid = Image.new("RGB", (10, 8), (40, 80, 120))
    obs, _ = run("zoom_in", {"bbox_2d": [100, 250, 500, 750], "factor": 3}, [solid])
    assert obs.images[0].size == (12, 12)  # the 4x4 crop times 3
    assert [c for _, c in obs.images[0].getcolors()] == [(40, 80, 120)]  # a uniform region stays uniform
    obs, _ = run("zoom_in", {"bbox_2d": [100, 250, 500, 750]}, [solid])
    assert obs.images[0].size == (8, 8)  # factor defaults to 2
    registry = ToolRegistry([ZoomIn(max_side=6)])
    obs = registry.run(ToolCall("zoom_in", {"bbox_2d": [100, 250, 500, 750], "factor": 8}), [solid])
    assert obs.images[0].size == (6, 6)  # capped: scale min(8, 6 / 4) = 1.5
    assert obs.text.startswith("Zoomed into [100, 250, 500, 750] by 1.5x, 6x6 pixels")


def test_lines_and_point_set_exactly_the_hand_computed_pixels():
    image = coded()
    obs, _ = run("draw_horizontal_line", {"y": 500}, [image])  # row floor(500 * 8 / 1000) = 4, 1 px wide
    assert red_pixels(obs.images[0]) == {(x, 4) for x in range(10)}
    assert red_pixels(image) == set()  # the conversation's image is not drawn on
    obs, _ = run("draw_horizontal_line", {"y": 1000}, [image])  # 1000: the last row
    assert red_pixels(obs.images[0]) == {(x, 7) for x in range(10)}
    obs, _ = run("draw_vertical_line", {"x": 250}, [image])  # column floor(2.5) = 2
    assert red_pixels(obs.images[0]) == {(2, y) for y in range(8)}
    obs, _ = run("point", {"x": 500, "y": 500}, [image])  # (5, 4), r = max(1, 8 // 50) = 1: a 3x3 square
    assert red_pixels(obs.images[0]) == {(x, y) for x in (4, 5, 6) for y in (3, 4, 5)}
    obs, _ = run("point", {"x": 1000, "y": 0}, [image])  # (9, 0): clipped at the corner
    assert red_pixels(obs.images[0]) == {(8, 0), (9, 0), (8, 1), (9, 1)}
    # 200 wide, 300 high: lines are max(1, 200 // 100) = 2 px; y=500 -> row 150, band 150..151
    obs, _ = run("draw_horizontal_line", {"y": 500}, [Image.new("RGB", (200, 300))])
    assert {y for _, y in red_pixels(obs.images[0])} == {150, 151}


def test_image_index_picks_the_image_and_is_checked():
    small, large = coded(), Image.new("RGB", (20, 20))
    obs, _ = run("crop", {"bbox_2d": [0, 0, 500, 500]}, [small, large])
    assert obs.images[0].size == (10, 10) and obs.text.endswith("(from image 1; this is image 2)")  # default: the last
    obs, _ = run("crop", {"bbox_2d": [0, 0, 500, 500], "image_index": 0}, [small, large])
    assert obs.images[0].size == (5, 4) and "(from image 0; this is image 2)" in obs.text
    obs, _ = run("crop", {"bbox_2d": [0, 0, 500, 500], "image_index": 1.0}, [small, large])  # 1.0 is the integer 1
    assert obs.error is None and obs.images[0].size == (10, 10)
    obs, _ = run("crop", {"bbox_2d": [0, 0, 500, 500], "image_index": 2}, [small, large])
    assert obs.error == "crop: image_index 2 is out of range: the conversation has 2 image(s), indices 0 to 1"
    obs, _ = run("point", {"x": 1, "y": 1}, [])
    assert obs.error == "point: there is no image in the conversation"


@pytest.mark.parametrize("arguments, message", [
    ({}, "missing required argument 'y' (height, 0 (top) to 1000 (bottom))"),
    ({"y": 1200}, "argument 'y' must be <= 1000, got 1200"),
    ({"y": -1}, "argument 'y' must be >= 0, got -1"),
    ({"y": "top"}, "argument 'y' must be a number, got \"top\""),
    ({"y": True}, "argument 'y' must be a number, got true"),
    ({"y": 5, "colour": "red"}, "unknown argument 'colour'; this tool takes ['image_index', 'y']"),
    ({"y": 5, "image_index": 0.5}, "argument 'image_index' must be an integer, got 0.5"),
    ([5], "arguments must be a JSON object, got [5]"),
])
def test_bad_arguments_name_the_argument_and_what_was_expected(arguments, message):
    obs, registry = run("draw_horizontal_line", arguments, [coded()])
    assert obs.error == f"draw_horizontal_line: {message}" and obs.images == []
    assert (registry.stats["draw_horizontal_line"].calls, registry.stats["draw_horizontal_line"].errors) == (1, 1)


def test_validate_arguments_list_length_and_item_type():
    params = Crop.parameters
    assert validate_arguments({"bbox_2d": [1, 2, 3]}, params)[1] == "argument 'bbox_2d' must be a list of 4 items, got 3"
    assert validate_arguments({"bbox_2d": [1, "a", 3, 4]}, params)[1] == "argument 'bbox_2d'[1] must be a number, got \"a\""
    assert validate_arguments({"bbox_2d": [1, 2, 3, 4]}, params) == ({"bbox_2d": [1, 2, 3, 4]}, None)


class Boom(Tool):
    name, description = "boom", "raises"

    def call(self, arguments, images):
        raise RuntimeError("kaput")


class Sleepy(Tool):
    name, description = "sleepy", "sleeps"

    def call(self, arguments, images):
        time.sleep(3)
        return Observation(text="awake")


class Liar(Tool):
    name, description = "liar", "returns a string"

    def call(self, arguments, images):
        return "not an observation"


def test_exceptions_and_timeouts_are_observations_and_counted():
    registry = ToolRegistry([Boom(), Sleepy(), Liar()])
    obs = registry.run(ToolCall("boom", {}), [])
    assert obs.error == "boom failed: RuntimeError: kaput" and obs.text == "Error: boom failed: RuntimeError: kaput"
    start = time.monotonic()
    obs = registry.run(ToolCall("sleepy", {}), [], time_limit_s=0.3)
    assert time.monotonic() - start < 0.3 + 0.5
    assert obs.error == "sleepy timed out after 0.3 s"
    assert registry.run(ToolCall("liar", {}), []).error == "liar returned str, not an Observation"
    assert (registry.stats["boom"].errors, registry.stats["boom"].timeouts) == (1, 0)
    assert (registry.stats["sleepy"].calls, registry.stats["sleepy"].errors, registry.stats["sleepy"].timeouts) == (1, 0, 1)


def test_registry_counters_schemas_and_invalid_calls():
    registry = ToolRegistry(image_tools())
    assert registry.names() == ["crop", "zoom_in", "draw_horizontal_line", "draw_vertical_line", "point"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Crop())
    schema = registry.schemas()[4]
    assert schema["type"] == "function" and schema["function"]["name"] == "point"
    assert schema["function"]["parameters"]["required"] == ["x", "y"]
    image = coded()
    registry.run(ToolCall("point", {"x": 1, "y": 2}), [image])
    registry.run(ToolCall("point", {"x": 1}), [image])
    assert registry.run(ToolCall("magnify", {}), [image]).error == (
        "unknown tool 'magnify'; available tools: ['crop', 'zoom_in', 'draw_horizontal_line', 'draw_vertical_line', 'point']")
    assert registry.run(CallError("the tool call is empty"), [image]).text == "Error: the tool call is empty"
    metrics = registry.metrics()
    assert (metrics["tools/point/calls"], metrics["tools/point/errors"], metrics["tools/point/timeouts"]) == (2.0, 1.0, 0.0)
    assert (metrics[f"tools/{INVALID}/calls"], metrics[f"tools/{INVALID}/errors"]) == (2.0, 2.0)
    assert "tools/crop/calls" not in metrics  # only tools that were called
    assert DrawVerticalLine().name in registry.names() and Point().name in registry.names()
    assert DrawHorizontalLine().schema()["function"]["parameters"]["properties"]["y"]["maximum"] == 1000
