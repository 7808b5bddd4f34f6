"""The tool-call format of the Qwen families: the tools in the prompt, the model's call, the observation turn.

The model calls a tool by writing (Qwen2.5 and Qwen3 chat templates define it; Qwen3-VL's
template has it too)::

    <tool_call>
    {"name": "zoom_in", "arguments": {"bbox_2d": [100, 200, 400, 500]}}
    </tool_call>

The engine stops at ``</tool_call>`` (``tool_call_stop``); ``parse_tool_call`` reads the last
complete call of the response text. The observation goes back as a user turn holding
``<tool_response>...</tool_response>`` (as Qwen's templates render a ``tool`` message), then the
next assistant turn opens; ``observation_turn`` processes that text and the observation's images
into a ``PromptInputs`` for ``rlvr.batch.continue_prompt``, so the model's own tokens are never
re-tokenised.

Which families' templates list tools: Qwen2-VL's and Qwen2.5-VL's do not (their
chat_template.json has no tools section, only the text models' tokenizer_config.json does);
Qwen3-VL's does, with this JSON format; Qwen3.5's does, but asks for an XML body
(``<function=name><parameter=k>v</parameter></function>``). rlvr does not depend on any of
them: ``tools_system_prompt`` writes the tools section of Qwen's text models into the system
message itself (``TOOLS_TEMPLATE_FRAGMENT`` is the same text as a chat-template fragment), so
every family gets the same prompt, and ``parse_tool_call`` accepts both bodies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from rlvr.agent.tools import CallError, Observation, ToolCall
from rlvr.batch import PromptInputs

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # every Qwen-VL family; the processor expands it
END_OF_TURN = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."

_TOOLS_INTRO = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_OUTRO = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments "
                "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

# The same system turn as a chat-template fragment (rendered with ``tools=``), for serving a family
# whose template has no tools section (Qwen2-VL, Qwen2.5-VL) with a tools-aware template: it must
# replace that template's own system turn. rlvr's rollouts need no template change: they pass
# ``tools_system_prompt`` as the system message, which every family's template renders as it is.
TOOLS_TEMPLATE_FRAGMENT = (
    "{%- if tools -%}<|im_start|>system{{ '\\n' }}"
    "{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] }}"
    "{%- else -%}" + DEFAULT_SYSTEM + "{%- endif -%}"
    "{{ " + json.dumps(_TOOLS_INTRO) + " }}"
    "{%- for tool in tools -%}{{ '\\n' }}{{ tool | tojson }}{%- endfor -%}"
    "{{ " + json.dumps(_TOOLS_OUTRO) + " }}<|im_end|>{{ '\\n' }}{%- endif -%}"
)


def tools_system_prompt(schemas: list[dict], system: str | None = None) -> str:
    """The system message listing ``schemas`` (``ToolRegistry.schemas()``) the way Qwen2.5's and
    Qwen3's text templates do: the system text, then a ``# Tools`` section with one JSON line per
    tool and the call format."""
    lines = "".join("\n" + json.dumps(schema, ensure_ascii=False) for schema in schemas)
    return (system if system is not None else DEFAULT_SYSTEM) + _TOOLS_INTRO + lines + _TOOLS_OUTRO


# --- parsing the model's call ---------------------------------------------------------------------

_XML_FUNCTION = re.compile(r"^<function=([^>\n]+)>(.*?)</function>$", re.DOTALL)
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


def _parse_xml_body(body: str) -> ToolCall | CallError:
    """Qwen3.5's (Qwen3-Coder's) body: ``<function=name><parameter=k>v</parameter>...</function>``;
    a value is read as JSON when it parses (numbers, lists), else kept as text."""
    match = _XML_FUNCTION.match(body)
    if not match:
        return CallError("the tool call's <function=...> block is not closed with </function>")
    arguments = {}
    for key, value in _XML_PARAMETER.findall(match.group(2)):
        try:
            arguments[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key.strip()] = value
    return ToolCall(name=match.group(1).strip(), arguments=arguments)


def _parse_json_body(body: str) -> ToolCall | CallError:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as e:
        return CallError(f"the tool call is not valid JSON ({e.msg} at character {e.pos}); write "
                         '<tool_call>{"name": ..., "arguments": {...}}</tool_call>')
    if not isinstance(payload, dict):
        return CallError(f"the tool call must be a JSON object with \"name\" and \"arguments\", got {type(payload).__name__}")
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return CallError('the tool call has no "name" (a string naming the tool)')
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string, as OpenAI's API does
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return CallError(f'the "arguments" of {name!r} are a string that is not JSON')
    if not isinstance(arguments, dict):
        return CallError(f'the "arguments" of {name!r} must be a JSON object, got {json.dumps(arguments)[:40]}')
    return ToolCall(name=name, arguments=arguments)


def parse_tool_call(text: str, tool_names: list[str] | None = None) -> ToolCall | CallError | None:
    """The last complete ``<tool_call>...</tool_call>`` of ``text``; None when there is none
    (the model answered). A malformed body or (given ``tool_names``) an unknown tool is a
    ``CallError`` whose reason the model sees as an error observation."""
    end = text.rfind(CALL_CLOSE)
    if end < 0:
        return None
    start = text.rfind(CALL_OPEN, 0, end)
    if start < 0:
        return CallError(f"{CALL_CLOSE} without an opening {CALL_OPEN}")
    body = text[start + len(CALL_OPEN):end].strip()
    if not body:
        return CallError("the tool call is empty")
    call = _parse_xml_body(body) if body.startswith("<function=") else _parse_json_body(body)
    if isinstance(call, ToolCall) and tool_names is not None and call.name not in tool_names:
        return CallError(f"unknown tool {call.name!r}; available tools: {list(tool_names)}")
    return call


# --- the observation turn ------------------------------------------------------------------------

@dataclass
class StopMarker:
    """Where the engine stops for a call: ``text`` and, when the tokenizer has it as one token,
    its ``token_id`` (add it to the engine's stop ids; else the engine must match the text)."""

    text: str
    token_id: int | None


def tool_call_stop(tokenizer) -> StopMarker:
    """``</tool_call>``: one token in Qwen2.5's, Qwen2.5-VL's and Qwen3's tokenizers (151658)."""
    ids = tokenizer.encode(CALL_CLOSE, add_special_tokens=False)
    return StopMarker(text=CALL_CLOSE, token_id=ids[0] if len(ids) == 1 else None)


def generation_prefix(processor, **template_kwargs) -> str:
    """What the chat template writes to open an assistant turn (``<|im_start|>assistant\\n``;
    Qwen3.5's thinking template adds ``<think>\\n``): the template's output with the generation
    prompt minus the output without it."""
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    render = lambda add: processor.apply_chat_template(messages, add_generation_prompt=add, tokenize=False,
                                                       **template_kwargs)
    with_prompt, without = render(True), render(False)
    if not with_prompt.startswith(without):
        raise ValueError("the chat template's generation prompt does not extend the conversation; "
                         "pass the assistant prefix to observation_turn explicitly")
    return with_prompt[len(without):]


def observation_text(observation: Observation, assistant_prefix: str) -> str:
    """The text after the model's ``</tool_call>``: the end of its turn, a user turn with the
    tool's response (its text, then one placeholder per image), and the next assistant turn's start."""
    images = IMAGE_PLACEHOLDER * len(observation.images)
    return (f"{END_OF_TURN}\n<|im_start|>user\n{RESPONSE_OPEN}\n{observation.text}{images}\n{RESPONSE_CLOSE}"
            f"{END_OF_TURN}\n{assistant_prefix}")


@dataclass
class ObservationTurn:
    """The tokens appended after a call, ready for ``rlvr.batch.continue_prompt``."""

    inputs: PromptInputs
    loss_mask: torch.Tensor  # [A] zeros: template and observation tokens are never trained on
    text: str  # what ``inputs.input_ids`` spell before the processor expanded the image placeholders


def observation_turn(observation: Observation, processor, assistant_prefix: str | None = None) -> ObservationTurn:
    """``observation`` processed by the run's ``processor`` (token ids, pixel values,
    ``mm_token_type_ids``, images). ``assistant_prefix`` defaults to ``generation_prefix(processor)``."""
    prefix = generation_prefix(processor) if assistant_prefix is None else assistant_prefix
    text = observation_text(observation, prefix)
    images = [image.convert("RGB") for image in observation.images] or None
    enc = processor(text=[text], images=images, return_tensors="pt")
    input_ids = enc["input_ids"][0]  # [A]
    mm_types = enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc else torch.zeros_like(input_ids)
    inputs = PromptInputs(input_ids=input_ids, mm_token_type_ids=mm_types, pixel_values=enc.get("pixel_values"),
                          image_grid_thw=enc.get("image_grid_thw"), images=images)
    return ObservationTurn(inputs=inputs, loss_mask=torch.zeros(len(input_ids), dtype=torch.float32), text=text)
