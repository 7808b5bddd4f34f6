"""Check a training setup before it spends GPU hours; one readable report, non-zero exit on problems.

    python -m rlvr.validate --config recipes/X.yaml [key=value ...] [--num-processes 8 --zero-stage 3 ...]

What it checks, in order:
1. Config: the recipe and overrides resolve (unknown keys, types) and pass the cross-field
   rules of ``rlvr.config.check_config`` for the run's process count (``--num-processes``, else
   the launcher's WORLD_SIZE or accelerate's config): the same call training makes, so a
   batch that does not split over the ranks fails here too. The output folder: what
   ``resume`` will do there (``rlvr.checkpoint.plan_resume``, training's own decision): a
   folder holding a run without ``resume=``, a resume from which step, which config keys
   changed and whether training would accept them, or a finished run.
2. Rewards: every ``reward.functions`` entry imports, and returns one finite float per
   completion on a made-up two-row batch.
3. Model and processor: the family is supported; the processor's special tokens (image,
   video, vision start/end, pad, end of turn) exist and have the ids the model config
   expects; the tokenizer fits the embedding matrix; the image processor's patch and merge
   sizes match the vision tower; the prompt budget plus the response budget fit the
   model's positions; there is a chat template.
4. Data (train and val files): every row goes through the same checks as training
   (``rlvr.data``): rows, usable rows, skipped rows by reason with examples, golds that do
   not parse, and image plus text prompt tokens (min/median/p95/max) against
   ``data.max_prompt_tokens``.
5. Memory: weights, gradients and optimizer state per GPU under the ZeRO stage, GPU count
   and LoRA rank given (or found in the accelerate environment), plus the generation KV
   cache, against ``--gpu-memory-gb`` or the local GPU.

``preflight(cfg)`` runs the cheap part (2, 3 and 5) for ``launch/train.py`` at start;
the data checks are done by training's own loader anyway.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import textwrap
from dataclasses import dataclass, field

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"
GIB = 1024**3


@dataclass
class Check:
    section: str
    status: str  # OK, INFO, WARN or FAIL
    message: str


@dataclass
class Report:
    """Checks in the order they ran, grouped by section when rendered."""

    title: str = "rlvr validate"
    checks: list[Check] = field(default_factory=list)

    def add(self, section: str, status: str, message: str) -> None:
        self.checks.append(Check(section, status, message))

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def render(self, width: int = 100) -> str:
        lines = [self.title, ""]
        sections: dict[str, list[Check]] = {}
        for c in self.checks:
            sections.setdefault(c.section, []).append(c)
        for section, checks in sections.items():
            lines.append(section)
            for c in checks:
                first, *rest = c.message.split("\n")
                # never break inside a flag, a key or a path (--allow-skipped, data/x-y.jsonl)
                keep = {"break_on_hyphens": False, "break_long_words": False}
                wrapped = textwrap.wrap(first, width - 8, **keep) or [""]
                for extra in rest:
                    wrapped += textwrap.wrap(extra, width - 10, initial_indent="  ", subsequent_indent="    ",
                                             **keep) or [""]
                lines.append(f"  {c.status:<5} {wrapped[0]}")
                lines.extend(f"        {w}" for w in wrapped[1:])
            lines.append("")
        n_fail = len(self.problems)
        n_warn = sum(c.status == WARN for c in self.checks)
        if n_fail:
            lines.append(f"{n_fail} problem{'s' * (n_fail > 1)}, {n_warn} warning{'s' * (n_warn != 1)}: "
                         "fix the FAIL lines above before launching.")
        else:
            lines.append(f"No problems found ({n_warn} warning{'s' * (n_warn != 1)}).")
        return "\n".join(lines)


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _gib(x: float) -> str:
    return f"{x:.2f} GiB" if x >= 0.1 else f"{x * 1024:.1f} MiB"


def _brief(e: BaseException, limit: int = 600) -> str:
    text = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) or not str(e) else str(e)
    return text if len(text) <= limit else text[:limit] + " ..."


# --------------------------------------------------------------------------- 1. config


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


# --------------------------------------------------------------------------- 4. data


@dataclass
class DataStats:
    rows: int = 0
    usable: int = 0
    reasons: dict[str, list[str]] = field(default_factory=dict)  # reason -> messages
    tokens: list[tuple[int, str]] = field(default_factory=list)  # (prompt tokens, id) of usable rows
    limited: bool = False

    @property
    def skipped(self) -> int:
        return sum(len(v) for v in self.reasons.values())


def _light_check(loc: str, row: dict, cfg, base_dir: str):
    """Row checks that need no processor (used when the processor could not be loaded)."""
    from rlvr.data import RowError, _image_refs, no_question
    from rlvr.rewards import GoldParseError, parse_gold

    row_id = row.get(cfg.id_key, loc)
    where = f"{loc} (id {row_id})" if row.get(cfg.id_key) is not None else loc  # a row without an id: its line
    if "__error__" in row:
        raise RowError(row.get("__reason__", "bad_json"), f"{where}: {row['__error__']}")
    q = row.get(cfg.question_key)
    if not isinstance(q, str) or not q.strip():
        raise RowError("empty_question", f"{where}: {no_question(row, cfg)}")
    answer = row.get(cfg.answer_key)
    if answer is None or not str(answer).strip():
        raise RowError("bad_gold", f"{where}: no gold answer in column {cfg.answer_key!r}")
    try:
        parse_gold(str(answer))
    except GoldParseError as e:
        raise RowError("bad_gold", f"{where}: {e}") from None  # e quotes the gold and says why
    for ref in _image_refs(row, cfg, base_dir):
        if isinstance(ref, str) and not os.path.isfile(ref):
            raise RowError("missing_image", f"{where}: image file not found: {ref}")


def scan_data(path: str, cfg, processor, max_rows: int | None) -> DataStats:
    """Every row of one data source through training's row checks (``rlvr.data``), counted.

    Raises ``rlvr.data.DataError`` when the source itself cannot be read."""
    from rlvr.data import RowError, _check_row, read_rows

    stats = DataStats()
    base_dir = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
    limits = [x for x in (max_rows, cfg.data.max_rows) if x is not None]
    limit = min(limits) if limits else math.inf
    for loc, row in read_rows(path, cfg.data.format):
        if stats.rows >= limit:
            stats.limited = max_rows is not None and (cfg.data.max_rows is None or max_rows < cfg.data.max_rows)
            break
        stats.rows += 1
        try:
            if processor is None:
                _light_check(loc, row, cfg.data, base_dir)
                stats.usable += 1
                continue
            example = _check_row(loc, row, cfg.data, processor, base_dir)
        except RowError as e:
            stats.reasons.setdefault(e.reason, []).append(str(e))
            continue
        except Exception as e:  # noqa: BLE001 - an unexpected failure on one row is still that row's problem
            stats.reasons.setdefault("unexpected_error", []).append(f"{loc}: {_brief(e)}")
            continue
        stats.usable += 1
        stats.tokens.append((example.prompt_tokens, example.id))
    return stats


def check_data(cfg, processor, report: Report, max_rows: int | None = None, allow_skipped: float = 0.0) -> None:
    from rlvr.data import DataError

    section = "Data"
    sources = [("train", f) for f in cfg.data.train_files] + [("val", f) for f in cfg.data.val_files]
    if not cfg.data.val_files:
        report.add(section, INFO, "data.val_files is empty: no evaluation (eval/ metrics) will run.")
    if processor is None and sources:
        report.add(section, WARN, "no processor: checked JSON, questions, golds and image files only; image decoding "
                                  "and prompt token counts need the processor (see above).")
    usable_train = 0
    for split, path in sources:
        try:
            stats = scan_data(path, cfg, processor, max_rows)
        except (DataError, OSError) as e:
            report.add(section, FAIL, f"{split} {path}: {_brief(e)}")
            continue
        except Exception as e:  # noqa: BLE001 - e.g. a parquet file that is not parquet
            report.add(section, FAIL, f"{split} {path}: cannot read it: {_brief(e)}")
            continue
        if split == "train":
            usable_train += stats.usable
        head = f"{split} {path}: {stats.rows} rows{' (checked the first ' + str(stats.rows) + ')' if stats.limited else ''}, " \
               f"{stats.usable} usable"
        if stats.rows == 0:
            report.add(section, FAIL, f"{split} {path}: no rows at all.")
            continue
        if stats.skipped:
            counts = ", ".join(f"{len(v)} {r}" for r, v in sorted(stats.reasons.items(), key=lambda kv: -len(kv[1])))
            share = stats.skipped / stats.rows
            lines = [f"{head}, {stats.skipped} skipped ({share:.1%}): {counts}"]
            for reason, messages in sorted(stats.reasons.items()):
                lines += [f"{reason}: {m}" for m in messages[:3]]
                if len(messages) > 3:
                    lines.append(f"{reason}: ... and {len(messages) - 3} more")
            if stats.usable == 0:
                status, advice = FAIL, "No usable rows: training would stop."
            elif cfg.data.strict:
                status, advice = FAIL, "data.strict=true: training would stop at the first of them."
            elif share > allow_skipped:
                status, advice = FAIL, (f"Training would skip them; fix the rows, or accept up to a share with "
                                        f"--allow-skipped {math.ceil(share * 100) / 100:g}.")
            else:
                status, advice = WARN, "Training will skip them."
            report.add(section, status, "\n".join([lines[0] + ". " + advice] + lines[1:]))
        else:
            report.add(section, OK, f"{head}, none skipped; every gold parses as a number")
        if "bad_gold" in stats.reasons:
            report.add(section, WARN,
                       f"{split} {path}: {len(stats.reasons['bad_gold'])} gold answer(s) do not parse as a number "
                       "(see bad_gold above); such rows can never be rewarded and are skipped.")
        if stats.tokens:
            values = sorted(t for t, _ in stats.tokens)
            p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
            biggest = max(stats.tokens)
            budget = cfg.data.max_prompt_tokens
            report.add(section, OK if biggest[0] <= budget else FAIL,
                       f"{split} prompt tokens (image + text): min {values[0]}, median {int(statistics.median(values))}, "
                       f"p95 {p95}, max {biggest[0]} (id {biggest[1]}) against data.max_prompt_tokens={budget}")
    if cfg.data.train_files and 0 < usable_train < cfg.trainer.prompts_per_step:
        report.add(section, WARN, f"only {usable_train} usable training rows for trainer.prompts_per_step="
                                  f"{cfg.trainer.prompts_per_step}: every step repeats prompts.")


# --------------------------------------------------------------------------- 5. memory


@dataclass
class MemoryEstimate:
    params: int  # all parameters
    trainable: int  # parameters that get gradients and optimizer state
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    reference_gib: float
    kv_cache_gib: float
    logits_chunk_gib: float
    notes: list[str]

    @property
    def states_gib(self) -> float:
        """Weights, gradients, optimizer state and reference model: a lower bound on training memory."""
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.reference_gib


def count_parameters(config, freeze_vision_tower: bool, lora_rank: int, lora_targets: str | None = None,
                     lora_vision: bool = False) -> tuple[int, int, int]:
    """(all parameters, trainable parameters, LoRA parameters) without allocating weights (meta device).

    LoRA adapters go on the ``nn.Linear`` layers whose full name matches ``lora_targets`` (a
    regex, as ``model.lora.target_modules``; None = every linear layer of the language model),
    outside the vision tower unless ``lora_vision``; never on the output head.
    """
    import re

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    from rlvr.models import family_of, vision_tower

    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config)
    model.tie_weights()  # weights on the meta device are not tied by from_config: a tied head counts once
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in vision_tower(model).parameters())
    if lora_rank <= 0:
        return total, total - vision if freeze_vision_tower else total, 0
    pattern = re.compile(lora_targets or r"(.*\.)?language_model\..*")
    vision_name = family_of(model).vision_attr
    head = model.get_output_embeddings()
    lora = 0
    for name, module in model.named_modules():
        in_vision = name == vision_name or name.startswith(vision_name + ".")
        if (isinstance(module, torch.nn.Linear) and module is not head and pattern.fullmatch(name)
                and (lora_vision or not in_vision)):
            lora += lora_rank * (module.in_features + module.out_features)
    return total + lora, lora, lora


def estimate_memory(cfg, config, num_gpus: int = 1, zero_stage: int = 0, lora_rank: int = 0,
                    on_gpu: bool = True, offload_optimizer: bool = False, offload_params: bool = False) -> MemoryEstimate:
    """Per-GPU bytes of model states under ZeRO ``zero_stage`` (0 = plain data parallel).

    Plain data parallel (what the trainer does without DeepSpeed): weights in the load dtype
    (``model.dtype=auto`` loads float32 and trains with bf16 autocast), gradients in the same
    dtype, AdamW's two moments in it too. DeepSpeed with bf16: 2-byte weights and gradients
    plus 12 bytes of optimizer state per trainable parameter (fp32 master copy and two
    moments), partitioned over GPUs from stage 1 (optimizer), 2 (+ gradients), 3 (+ weights).
    ZeRO offload moves the optimizer state (and with ``offload_params`` the weights) to CPU memory.
    """
    lora_cfg = getattr(cfg.model, "lora", None)
    total, trainable, lora = count_parameters(config, cfg.model.freeze_vision_tower, lora_rank,
                                              getattr(lora_cfg, "target_modules", None),
                                              getattr(lora_cfg, "vision_tower", False))
    frozen = total - trainable
    n = max(1, num_gpus)
    load_bytes = {"auto": 4, "float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.model.dtype, 4)
    notes = []
    if zero_stage > 0:
        w, g, o = 2, 2, 12
        notes.append(f"DeepSpeed ZeRO-{zero_stage} over {n} GPU(s), bf16 weights/gradients, fp32 master weights and "
                     "AdamW moments (12 bytes per trainable parameter)")
    else:
        w = g = load_bytes
        o = 2 * load_bytes
        notes.append(f"plain data parallel over {n} GPU(s): every GPU holds everything; weights, gradients and AdamW "
                     f"moments in {'float32' if load_bytes == 4 else cfg.model.dtype} ({load_bytes} bytes)")
    weights = (trainable + frozen) * w / (n if zero_stage >= 3 else 1)
    grads = trainable * g / (n if zero_stage >= 2 else 1)
    optim = trainable * o / (n if zero_stage >= 1 else 1)
    if zero_stage > 0 and offload_optimizer:
        optim = 0.0
        notes.append("optimizer state offloaded to CPU memory")
    if zero_stage >= 3 and offload_params:
        weights = 0.0
        notes.append("weights offloaded to CPU memory (gathered layer by layer)")
    reference = 0.0
    if cfg.algorithm.kl_coef > 0:
        if lora:
            notes.append("algorithm.kl_coef > 0 with LoRA: the reference is the model with its adapters off, no copy")
        else:
            reference = total * load_bytes / (n if zero_stage >= 3 else 1)  # partitioned like the policy under ZeRO-3
            notes.append("algorithm.kl_coef > 0: a frozen reference copy of the model")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", 0) or 0
    heads = getattr(text, "num_attention_heads", 1) or 1
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (getattr(text, "hidden_size", 0) // heads)
    act_bytes = 2 if on_gpu and cfg.model.dtype != "float32" else 4
    seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    kv = cfg.rollout.micro_batch_size * seq * layers * 2 * kv_heads * head_dim * act_bytes
    vocab = getattr(text, "vocab_size", 0) or 0
    # one chunk of fp32 logits and its gradient: logprob_chunk_size positions of every micro-batch
    # row; under a token budget a chunk holds at most the budget's tokens
    t = cfg.trainer
    rows = t.micro_batch_size * t.logprob_chunk_size if t.micro_batch_tokens is None else t.micro_batch_tokens
    logits = rows * vocab * 4 * 2
    if lora:
        notes.append(f"LoRA rank {lora_rank} on the linear layers model.lora.target_modules matches: "
                     f"{_count(lora)} trainable parameters")
    elif cfg.model.freeze_vision_tower:
        notes.append("model.freeze_vision_tower=true: the vision tower gets no gradients or optimizer state")
    return MemoryEstimate(total, trainable, weights / GIB, grads / GIB, optim / GIB, reference / GIB, kv / GIB,
                          logits / GIB, notes)


def check_memory(cfg, config, report: Report, num_gpus: int, zero_stage: int, lora_rank: int | None,
                 gpu_memory_gb: float | None, offload: tuple[bool, bool] = (False, False)) -> MemoryEstimate | None:
    """``lora_rank`` None: the config's ``model.lora.rank`` (0 where the config has no LoRA)."""
    section = "Memory per GPU (estimate)"
    if lora_rank is None:
        lora_rank = int(getattr(getattr(cfg.model, "lora", None), "rank", 0) or 0)
    try:
        est = estimate_memory(cfg, config, num_gpus, zero_stage, lora_rank, offload_optimizer=offload[0],
                              offload_params=offload[1])
    except Exception as e:  # noqa: BLE001 - an estimate must not stop the report
        report.add(section, WARN, f"could not estimate memory: {_brief(e)}")
        return None
    report.add(section, INFO, f"{_count(est.params)} parameters, {_count(est.trainable)} trainable; "
                              + "; ".join(est.notes))
    report.add(section, INFO, f"weights {_gib(est.weights_gib)} + gradients {_gib(est.grads_gib)} + optimizer "
                              f"{_gib(est.optimizer_gib)}" + (f" + reference model {_gib(est.reference_gib)}"
                                                              if est.reference_gib else "")
                              + f" = {_gib(est.states_gib)} of model states; on top: generation KV cache up to "
                              f"{_gib(est.kv_cache_gib)} (rollout.micro_batch_size={cfg.rollout.micro_batch_size} x "
                              f"{cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens} tokens), log-prob chunk "
                              f"{_gib(est.logits_chunk_gib)}, and activations (not estimated)")
    if gpu_memory_gb is None:
        report.add(section, INFO, "no GPU here to compare with; pass --gpu-memory-gb 80 (or your GPU's size) to check")
        return est
    if est.states_gib > gpu_memory_gb:
        report.add(section, FAIL, f"model states alone need {_gib(est.states_gib)} per GPU, more than the "
                                  f"{gpu_memory_gb:g} GiB available: training cannot fit. Use more GPUs with ZeRO-3 "
                                  "(--zero-stage 3), LoRA, model.freeze_vision_tower=true or a smaller model.")
    elif est.states_gib + est.kv_cache_gib > gpu_memory_gb:
        report.add(section, WARN, f"model states plus the generation KV cache need "
                                  f"{_gib(est.states_gib + est.kv_cache_gib)}, more than {gpu_memory_gb:g} GiB; "
                                  "lower rollout.micro_batch_size.")
    else:
        report.add(section, OK, f"{_gib(est.states_gib + est.kv_cache_gib)} of states and KV cache fit in "
                                f"{gpu_memory_gb:g} GiB, leaving {_gib(gpu_memory_gb - est.states_gib - est.kv_cache_gib)} "
                                "for activations")
    return est


def _environment_offload() -> tuple[bool, bool]:
    """(optimizer, weights) offloaded to CPU, from accelerate's launcher environment."""
    return (os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") in ("cpu", "nvme"),
            os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") in ("cpu", "nvme"))


def _environment_defaults() -> tuple[int, int, float | None]:
    """(GPUs, ZeRO stage, GiB per GPU) from the launcher's environment and the local GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0") or 0)
    memory = None
    try:
        import torch

        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory / GIB
    except Exception:  # noqa: BLE001
        pass
    return world, stage, memory


def _default_accelerate_processes() -> int | None:
    """num_processes of accelerate's default config (``accelerate config``), if there is one."""
    home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
    path = os.path.join(home, "accelerate", "default_config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        return _accelerate_file(path)[0]
    except (OSError, ValueError):
        return None


def _accelerate_file(path: str) -> tuple[int | None, int | None, tuple[bool, bool]]:
    """(num_processes, zero_stage, (optimizer offloaded, weights offloaded)) from an accelerate config YAML."""
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    ds = data.get("deepspeed_config") or {}
    offload = (ds.get("offload_optimizer_device") in ("cpu", "nvme"), ds.get("offload_param_device") in ("cpu", "nvme"))
    return data.get("num_processes"), ds.get("zero_stage"), offload


# --------------------------------------------------------------------------- entry points


def preflight(cfg, processor=None, num_gpus: int | None = None, zero_stage: int | None = None,
              lora_rank: int | None = None, gpu_memory_gb: float | None = None,
              offload: tuple[bool, bool] | None = None) -> Report:
    """The cheap checks for the start of training: rewards, model/processor agreement, memory.

    Loads the processor unless given, and the model config (not the weights). GPUs, ZeRO
    stage and GPU memory default to the launcher's environment and the local GPU.
    """
    report = Report("rlvr preflight")
    env_gpus, env_stage, env_memory = _environment_defaults()
    check_rewards(cfg, report)
    if processor is None:
        processor, config = open_model(cfg, report)
    else:
        try:
            config = load_model_config(cfg.model.name_or_path, cfg.model.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            report.add("Model and processor", FAIL, f"cannot read the model config: {_brief(e)}")
            config = None
    if processor is not None and config is not None:
        check_model_processor(cfg, processor, config, report)
    if config is not None:
        check_memory(cfg, config, report, num_gpus or env_gpus, env_stage if zero_stage is None else zero_stage,
                     lora_rank, gpu_memory_gb if gpu_memory_gb is not None else env_memory,
                     offload if offload is not None else _environment_offload())
    return report


def validate_setup(config_path: str | None, overrides: list[str], max_rows: int | None = None,
                   allow_skipped: float = 0.0, num_gpus: int | None = None, zero_stage: int | None = None,
                   lora_rank: int | None = None, gpu_memory_gb: float | None = None,
                   offload: tuple[bool, bool] | None = None) -> Report:
    """Every check, in order; the report of ``python -m rlvr.validate``.

    ``num_gpus``: the processes the run will have (default: the launcher's environment, else 1);
    the config checks are training's own for that many processes.
    """
    from rlvr.config import ConfigError, load_config, check_config

    shown = config_path or "defaults"
    report = Report(f"rlvr validate: {shown}" + (f" with {len(overrides)} override(s)" if overrides else ""))
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        report.add("Config", FAIL, str(e))
        return report
    except OSError as e:
        report.add("Config", FAIL, f"cannot read {config_path}: {_brief(e)}")
        return report
    env_gpus, env_stage, env_memory = _environment_defaults()
    processes = num_gpus or env_gpus
    try:
        check_config(cfg, num_processes=processes)
        report.add("Config", OK, f"resolves and passes the cross-field checks for {processes} process"
                                 f"{'es' * (processes > 1)}")
    except ConfigError as e:
        report.add("Config", FAIL, f"{e}\n(checked for {processes} process{'es' * (processes > 1)}; "
                                   "set the count with --num-processes)")
    check_output_dir(cfg, report)
    check_rewards(cfg, report)
    processor, config = open_model(cfg, report)
    if processor is not None and config is not None:
        check_model_processor(cfg, processor, config, report)
    check_data(cfg, processor, report, max_rows, allow_skipped)
    if config is not None:
        check_memory(cfg, config, report, num_gpus or env_gpus, env_stage if zero_stage is None else zero_stage,
                     lora_rank, gpu_memory_gb if gpu_memory_gb is not None else env_memory,
                     offload if offload is not None else _environment_offload())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rlvr.validate",
        description="Check a training setup before launching: config, rewards, model and processor, data, memory. "
                    "Prints one report; exits 1 if anything must be fixed.")
    p.add_argument("--config", help="recipe YAML")
    p.add_argument("--rows", type=int, default=None, help="check only the first N rows of each data file")
    p.add_argument("--allow-skipped", type=float, default=0.0, metavar="SHARE",
                   help="accept up to this share of skipped rows per file as a warning (default 0: any is a problem)")
    p.add_argument("--num-processes", "--num-gpus", dest="num_gpus", type=int, default=None,
                   help="processes (GPUs) of the run; the batch must split evenly over them (default: WORLD_SIZE, "
                        "else --accelerate-config's or accelerate's default config's num_processes, else 1)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="DeepSpeed ZeRO stage, 0 = none (default: from the accelerate environment)")
    p.add_argument("--accelerate-config", help="accelerate config YAML to take num_processes and zero_stage from")
    p.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank for the memory estimate (default: model.lora.rank where the config has it, else 0)")
    p.add_argument("--gpu-memory-gb", type=float, default=None, help="memory per GPU (default: the local GPU's)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    num_gpus, zero_stage, offload = args.num_gpus, args.zero_stage, None
    if args.accelerate_config:
        try:
            procs, stage, offload = _accelerate_file(args.accelerate_config)
        except (OSError, ValueError) as e:
            p.error(f"--accelerate-config {args.accelerate_config}: {e}")
        num_gpus = num_gpus or procs
        zero_stage = zero_stage if zero_stage is not None else stage
    elif num_gpus is None and "WORLD_SIZE" not in os.environ:
        num_gpus = _default_accelerate_processes()
    if num_gpus is not None and num_gpus < 1:
        p.error(f"--num-processes {num_gpus}: must be >= 1")
    import logging

    logging.basicConfig(level=logging.ERROR)  # the report says it all; rlvr.data's skip warnings would repeat it
    report = validate_setup(args.config, args.overrides, args.rows, args.allow_skipped, num_gpus, zero_stage,
                            args.lora_rank, args.gpu_memory_gb, offload)
    print(report.render())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
