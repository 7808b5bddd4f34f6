"""rlvr.agent.calls: the tools section of the prompt, parsing the model's call, the observation turn's tokens."""

import pytest
import torch
from PIL import Image

from rlvr.agent.calls import (
    TOOLS_TEMPLATE_FRAGMENT,
    generation_prefix,
    observation_turn,
    parse_tool_call,
    tool_call_stop,
    tools_system_prompt,
)
from rlvr.agent.tools import CallError, Observation, ToolCall, ToolRegistry, image_tools
from rlvr.batch import continue_prompt

NAMES = ["crop", "zoom_in", "point"]

POINT = {"type": "function", "function": {"name": "point", "description": "Mark a point.",
                                          "parameters": {"type": "object", "properties": {}}}}


def test_tools_system_prompt_is_qwen_text_models_tools_section():
    assert tools_system_prompt([POINT], system="Be brief.") == (
        "Be brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "point", "description": "Mark a point.", '
        '"parameters": {"type": "object", "properties": {}}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    assert tools_system_prompt([]).startswith("You are a helpful assistant.\n\n# Tools")


def test_template_fragment_renders_the_same_system_turn(qwen25_dir):
    from rlvr.models import load_processor

    tokenizer = load_processor(qwen25_dir).tokenizer
    schemas = ToolRegistry(image_tools()).schemas()
    for messages, system in (([{"role": "system", "content": "Be brief."}], "Be brief."),
                             ([{"role": "user", "content": "hi"}], None)):
        rendered = tokenizer.apply_chat_template(messages, tools=schemas, chat_template=TOOLS_TEMPLATE_FRAGMENT,
                                                 tokenize=False)
        assert rendered == "<|im_start|>system\n" + tools_system_prompt(schemas, system) + "<|im_end|>\n"
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=TOOLS_TEMPLATE_FRAGMENT,
                                         tokenize=False) == ""  # no tools: the template's own system turn


@pytest.mark.parametrize("text, expected", [
    ('I will zoom. <tool_call>\n{"name": "zoom_in", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n</tool_call>',
     ToolCall("zoom_in", {"bbox_2d": [1, 2, 3, 4]})),
    # several calls: the last complete one; an unclosed call after it is ignored
    ('<tool_call>{"name": "crop", "arguments": {}}</tool_call> then <tool_call>{"name": "point", "arguments": {"x": 1}}'
     '</tool_call> and <tool_call>{"name": "crop"', ToolCall("point", {"x": 1})),
    ('<tool_call>{"name": "point", "arguments": "{\\"x\\": 3}"}</tool_call>', ToolCall("point", {"x": 3})),
    ('<tool_call>{"name": "point"}</tool_call>', ToolCall("point", {})),
    # Qwen3.5's XML body: values read as JSON where they parse
    ("<tool_call>\n<function=point>\n<parameter=x>\n500\n</parameter>\n<parameter=label>\nthe cat\n</parameter>\n"
     "</function>\n</tool_call>", ToolCall("point", {"x": 500, "label": "the cat"})),
    ("The answer is \\boxed{3}.", None),
])
def test_parse_tool_call_well_formed(text, expected):
    assert parse_tool_call(text, NAMES) == expected


@pytest.mark.parametrize("text, reason", [
    ('<tool_call>{"name": "crop", "arguments": {"bbox_2d": [1, 2}}</tool_call>',
     "the tool call is not valid JSON (Expecting ',' delimiter at character 47); "
     'write <tool_call>{"name": ..., "arguments": {...}}</tool_call>'),
    ('<tool_call>{"arguments": {}}</tool_call>', 'the tool call has no "name" (a string naming the tool)'),
    ('<tool_call>["crop"]</tool_call>', 'the tool call must be a JSON object with "name" and "arguments", got list'),
    ('<tool_call>{"name": "crop", "arguments": [1]}</tool_call>', 'the "arguments" of \'crop\' must be a JSON object, got [1]'),
    ('<tool_call>{"name": "crop", "arguments": "x="}</tool_call>', 'the "arguments" of \'crop\' are a string that is not JSON'),
    ('<tool_call>{"name": "magnify", "arguments": {}}</tool_call>',
     "unknown tool 'magnify'; available tools: ['crop', 'zoom_in', 'point']"),
    ("<tool_call>  </tool_call>", "the tool call is empty"),
    ('{"name": "crop"}</tool_call>', "</tool_call> without an opening <tool_call>"),
    ("<tool_call><function=point><parameter=x>1</parameter></tool_call>",
     "the tool call's <function=...> block is not closed with </function>"),
])
def test_parse_tool_call_malformed_gives_a_reason(text, reason):
    assert parse_tool_call(text, NAMES) == CallError(reason)


def test_stop_marker_is_one_token_where_the_tokenizer_has_it(qwen25_dir):
    from rlvr.models import load_processor

    tokenizer = load_processor(qwen25_dir).tokenizer
    assert tool_call_stop(tokenizer).token_id is None  # the tiny BPE spells it in pieces: the engine matches text
    tokenizer.add_tokens(["</tool_call>"])  # as Qwen2.5's and Qwen3's tokenizers have it (id 151658 there)
    marker = tool_call_stop(tokenizer)
    assert marker.text == "</tool_call>" and marker.token_id == tokenizer.convert_tokens_to_ids("</tool_call>")


def test_generation_prefix_per_family(tmp_path, qwen25_dir):
    from rlvr.devtools.make_tiny_model import make_tiny_model
    from rlvr.models import load_processor

    assert generation_prefix(load_processor(qwen25_dir)) == "<|im_start|>assistant\n"
    qwen35 = load_processor(make_tiny_model("qwen3_5", str(tmp_path / "q35")))
    assert generation_prefix(qwen35) == "<|im_start|>assistant\n<think>\n"  # Qwen3.5 thinks by default
    assert generation_prefix(qwen35, enable_thinking=False) == "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_observation_turn_tokens_images_and_continue_prompt(qwen25_dir):
    from rlvr.models import load_processor

    processor = load_processor(qwen25_dir)
    tokenizer = processor.tokenizer
    # 56x56 -> grid (1, 4, 4): 4 image tokens after the 2x2 merge; 112 wide x 56 high -> (1, 4, 8): 8 tokens
    square, wide = Image.new("RGB", (56, 56), (250, 0, 0)), Image.new("RGB", (112, 56), (0, 0, 250))
    turn = observation_turn(Observation(text="Two crops", images=[square, wide]), processor)
    pad = "<|image_pad|>"
    assert tokenizer.decode(turn.inputs.input_ids) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nTwo crops"
        f"<|vision_start|>{pad * 4}<|vision_end|><|vision_start|>{pad * 8}<|vision_end|>"
        "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    image_id = tokenizer.convert_tokens_to_ids(pad)
    assert int((turn.inputs.input_ids == image_id).sum()) == 12
    assert torch.equal(turn.inputs.mm_token_type_ids, (turn.inputs.input_ids == image_id).long())
    assert turn.inputs.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 8]]
    assert torch.equal(turn.loss_mask, torch.zeros(len(turn.inputs.input_ids)))  # nothing here is the model's

    # the prompt (one image), the model's call as sampled ids, then the observation turn
    prompt_enc = processor(text=["<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
                                 "<|im_start|>assistant\n"], images=[Image.new("RGB", (56, 56), (0, 250, 0))],
                           return_tensors="pt")
    from rlvr.batch import PromptInputs

    prompt = PromptInputs(prompt_enc["input_ids"][0], prompt_enc["mm_token_type_ids"][0], prompt_enc["pixel_values"],
                          prompt_enc["image_grid_thw"], images=[Image.new("RGB", (56, 56), (0, 250, 0))])
    call_ids = torch.tensor(tokenizer.encode('<tool_call>{"name": "crop"}</tool_call>'))
    whole = continue_prompt(prompt, call_ids, turn.inputs)
    n, m = len(prompt.input_ids), len(call_ids)
    assert torch.equal(whole.input_ids, torch.cat([prompt.input_ids, call_ids, turn.inputs.input_ids]))
    assert whole.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 4], [1, 4, 8]]
    # pixel rows in image order: prompt (16 patches), square (16), wide (32), each as the processor makes it alone
    alone = [processor.image_processor(images=[im], return_tensors="pt")["pixel_values"]
             for im in (prompt.images[0], square, wide)]
    assert [len(a) for a in alone] == [16, 16, 32]
    assert torch.equal(whole.pixel_values, torch.cat(alone))
    assert whole.images[1:] == turn.inputs.images and len(whole.images) == 3
    assert int(whole.mm_token_type_ids[n:n + m].sum()) == 0 and int(whole.mm_token_type_ids.sum()) == 4 + 12


def test_observation_turn_without_images_and_error_text(qwen25_dir):
    from rlvr.models import load_processor

    processor = load_processor(qwen25_dir)
    turn = observation_turn(Observation.failure("crop timed out after 2 s"), processor, assistant_prefix="<|im_start|>assistant\n")
    assert processor.tokenizer.decode(turn.inputs.input_ids) == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nError: crop timed out after 2 s\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert turn.inputs.pixel_values is None and turn.inputs.image_grid_thw is None and turn.inputs.images is None
    assert int(turn.inputs.mm_token_type_ids.sum()) == 0
