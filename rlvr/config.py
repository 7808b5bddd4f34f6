"""One typed config tree for rlvr: every default lives in the dataclasses below.

Flow: dataclass defaults -> merged with a YAML recipe (nested mapping, only the keys it changes)
-> merged with dotted command-line overrides `a.b=value`, in order -> typed objects again.
Unknown keys are an error naming the closest valid key; type errors say what was expected and
where the value came from; `validate` runs cross-field checks before any model is loaded.
"""

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

LOSS_NAMES = ("sapo", "grpo", "dapo", "dr_grpo", "gspo", "cispo")
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
# transformers attention kernels; sdpa works everywhere, flash_attention_* on CUDA with their package
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DATA_FORMATS = ("auto", "jsonl", "disk", "parquet", "hub")
LR_SCHEDULES = ("constant", "cosine")
ANSWER_EXTRACTIONS = ("boxed", "last_number")
COMMAND_LINE = "command line"  # the source named in errors about `key=value` overrides


class ConfigError(ValueError):
    """A config problem a person has to fix; the message says what, where and how."""


# Every linear layer of the language model (attention, MLP, and linear-attention projections;
# not the output head). Only nn.Linear modules are adapted, and vision-tower matches are
# dropped unless model.lora.vision_tower=true.
LORA_TARGETS = r"(.*\.)?language_model\..*"


@dataclass
class LoraConfig:
    rank: int = 0  # adapter rank r; 0 = no LoRA, train the full model
    alpha: float = 16.0  # adapter scale numerator: updates are scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: str = LORA_TARGETS  # regex, full match on module names (model.named_modules()), Linear only
    vision_tower: bool = False  # also adapt vision-tower layers the regex matches


@dataclass
class ModelConfig:
    name_or_path: str = ""  # local folder or hub id of the policy model; required
    dtype: str = "auto"  # auto (bfloat16 if the GPU supports it, else float32) | float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # attention kernel: sdpa | eager | flash_attention_2 | flash_attention_3
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    freeze_vision_tower: bool = False  # train only the language model, keep the vision encoder fixed
    trust_remote_code: bool = False  # allow model code from the hub repository to run
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (peft) instead of full fine-tuning


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # training data: one path/hub id or a list
    val_files: list[str] = field(default_factory=list)  # validation data, same forms; empty = none
    format: str = "auto"  # auto (from the path) | jsonl | disk | parquet | hub
    question_key: str = "question"  # row column holding the question text
    answer_key: str = "answer"  # row column holding the reference answer
    images_key: str = "images"  # row column holding a list of images
    image_key: str = "image"  # row column holding a single image (used when images_key is absent)
    id_key: str = "id"  # row column holding the sample id (for logs and errors)
    source_key: str = "source"  # row column naming the sub-dataset (for per-source metrics)
    # user-turn text; "{question}" is replaced by the question (use str.replace: the default has "{}")
    prompt_template: str = (
        "{question}\n\nThink step by step. Put your final answer, a single number, in \\boxed{}."
    )
    system_prompt: str | None = None  # system-turn text; None = no system turn
    min_pixels: int = 3136  # smallest image area after resizing, pixels
    max_pixels: int = 1003520  # largest image area after resizing, pixels
    max_prompt_tokens: int = 2048  # prompt budget, image plus text tokens
    strict: bool = False  # raise on a malformed row instead of skipping it with a warning
    shuffle: bool = True  # shuffle training rows each epoch
    max_rows: int | None = None  # use only the first N rows (debugging); None = all


@dataclass
class RolloutConfig:
    group_size: int = 8  # G: responses sampled per (image, question)
    max_new_tokens: int = 1024  # response length cap, tokens
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    micro_batch_size: int = 32  # sequences per generate call
    # Encode each prompt's images and prefill its prompt once, then expand the KV cache (and
    # the M-RoPE offsets) to its G samples; false runs vision and prefill for every sample.
    shared_prefill: bool = True
    min_new_tokens: int = 0  # the stop tokens are suppressed before this many new tokens (benchmarks)
    # ZeRO-3 only: gather the full weights on every GPU for the whole rollout (fast, needs the
    # model's 16-bit size free on each GPU). false generates through the partitioned weights,
    # gathering every layer again for every token: no extra memory, but many times slower.
    zero3_gather_weights: bool = True


@dataclass
class RewardFunctionConfig:
    name: str  # import path "module:function"
    weight: float = 1.0  # multiplier of this function's reward in the total


@dataclass
class RewardConfig:
    # reward functions, summed with their weights
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig("rlvr.rewards:numeric_reward", 1.0)]
    )
    answer_extraction: str = "boxed"  # boxed (last \boxed{...}) | last_number
    rel_tol: float = 0.0  # extra relative tolerance on top of equality after rounding to 6 decimals; 0 = none
    timeout_s: float = 5.0  # per-response reward time limit, seconds
    num_workers: int = 2  # reward worker processes
    batch_timeout_s: float = 20.0  # wall-time budget of one reward call (a batch); answers left then score 'timeout'; 0 = none


@dataclass
class AlgorithmConfig:
    loss: str = "sapo"  # policy loss, one of LOSS_NAMES
    aggregation: str | None = None  # token/sequence reduction, one of AGGREGATIONS; None = loss's own
    tau_pos: float = 1.0  # SAPO gate temperature for positive advantages
    tau_neg: float = 1.05  # SAPO gate temperature for negative advantages
    # ratio clip epsilons of the clipped losses; None = the loss's own default
    # (grpo/dr_grpo 0.2/0.2, dapo 0.2/0.28, gspo 3e-4/4e-4, cispo upper 5.0; see rlvr.losses)
    clip_low: float | None = None  # lower ratio clip epsilon
    clip_high: float | None = None  # upper ratio clip epsilon
    log_ratio_clamp: float = 20.0  # clamp on |log ratio| before exp, nats
    kl_coef: float = 0.0  # weight of the KL penalty to the reference model; 0 = no reference
    # weight of the entropy bonus (loss -= coef * mean token entropy): keeps sampling answers the
    # policy would otherwise stop trying; 0 = off (README, When learning stalls)
    entropy_coef: float = 0.0
    scale_by_std: bool = True  # divide advantages by the group's reward std
    adv_eps: float = 1e-6  # added to the group std before dividing


@dataclass
class TrainerConfig:
    max_steps: int = 100  # RL steps, one rollout batch each
    prompts_per_step: int = 8  # prompts per rollout batch (sequences = prompts * group_size)
    num_minibatches: int = 1  # optimizer steps per rollout batch
    micro_batch_size: int = 8  # sequences per forward/backward
    # Token budget per forward/backward instead of a fixed count; None = micro_batch_size.
    # Cost of a micro-batch: sequences x its longest sequence (prompt with image placeholders
    # + response) + the vision-tower patches of its prompts' images, each prompt's once (its
    # samples share them). Samples are packed longest first; one over the budget by itself
    # runs alone (their share: metric batch/over_budget). The gradient is the same either
    # way: only memory and speed change. micro_batch_size is then unused.
    micro_batch_tokens: int | None = None
    lr: float = 1e-6  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW epsilon
    lr_schedule: str = "constant"  # constant | cosine (after warmup)
    warmup_steps: int = 0  # linear warmup, optimizer steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0  # gradient clipping threshold, L2 norm
    seed: int = 42  # seed for sampling, shuffling and init
    logprob_chunk_size: int = 512  # tokens per chunk when computing log-probs
    # Rows of one prompt in a micro-batch run the prompt (and its images) once, then their
    # responses on its KV cache; same log-probs and gradients (see README, Speed and memory).
    shared_prompt_forward: bool = True
    # A collective that waits longer than this fails the run with an error instead of hanging
    # (a rank died or is stuck). Must exceed the slowest step between collectives.
    collective_timeout_s: int = 1800


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # save every N RL steps; 0 = only at the end
    keep_last: int = 2  # number of recent checkpoints kept on disk
    save_final_model: bool = True  # also save the final model in Hugging Face format
    # resume=auto/PATH with a config that changes what the run means (model, data, algorithm,
    # batch shape, lr schedule; see rlvr.checkpoint.SAFE_RESUME_CHANGES) is refused unless true
    allow_resume_changes: bool = False


@dataclass
class EvalConfig:
    every_steps: int = 0  # evaluate on data.val_files every N RL steps; 0 = only at the end (no val_files: never)
    k: int = 8  # sampled responses per prompt: pass@1 is their mean; pass@k and maj@k use all k
    greedy: bool = True  # also decode one greedy response per prompt (eval/greedy)
    max_prompts: int | None = None  # evaluate the first N validation rows only; None = all
    temperature: float | None = None  # sampling temperature; None = rollout.temperature
    max_new_tokens: int | None = None  # response length cap, tokens; None = rollout.max_new_tokens
    seed: int = 1234  # sampling seed, the same at every evaluation: evaluations differ only by the weights


@dataclass
class LogConfig:
    wandb: bool = False  # log to Weights & Biases
    project: str = "rlvr"  # wandb project
    run_name: str | None = None  # wandb run name; None = derived from output_dir
    tags: list[str] = field(default_factory=list)  # wandb tags
    group: str | None = None  # wandb group
    progress_bar: bool = True  # a progress bar on a terminal; plain lines with ETA when the console is a file
    print_every: int = 0  # steps between plain progress lines (console not a terminal); 0 = about 20 per run
    samples_every: int = 50  # a page of rollouts (samples/step_N.html) and a wandb table every N steps and at step 1; 0 = off
    samples_per_step: int = 4  # rollouts on each samples page
    plots: bool = True  # write <output_dir>/plots/*.png at each evaluation and at the end


@dataclass
class Config:
    output_dir: str = "runs/default"  # run directory: checkpoints, logs, resolved config
    # None: a fresh run (refuses an output_dir that already holds one) | auto: continue from the
    # newest complete checkpoint in output_dir, or start fresh if there is none | a checkpoint folder.
    # A resume compares the config with the run's own and refuses changes to what the run means
    # (see checkpoint.allow_resume_changes)
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# ---------------------------------------------------------------- types and keys


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
    return tp, False


_SCALAR_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a float", str: "a string"}


def _describe(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    if optional:
        return f"{_describe(inner)} or null"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if item is str:
            return "a list of strings (or a single string)"
        if dataclasses.is_dataclass(item):
            return f"a list of mappings with keys {[f.name for f in dataclasses.fields(item)]}"
        return f"a list of {_SCALAR_NAMES[item].split(' ', 1)[1]}s"
    return _SCALAR_NAMES.get(tp, "a mapping")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _paths(cls: type, prefix: str = "", sections: bool = False) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp, path = _hints(cls)[f.name], _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            out += ([path] if sections else []) + _paths(tp, path, sections)
        else:
            out.append(path)
    return out


def all_keys() -> list[str]:
    """Every dotted leaf key, e.g. 'trainer.lr' (lists such as 'reward.functions' are leaves)."""
    return _paths(Config)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested dicts and lists, in field order."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- help text


def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in this file: the comment lines just above it and its trailing comment.

    The comments next to the dataclass fields are the one source of the keys' help text
    (``launch/train.py --help-config``); a test checks that every key has one.
    """
    import inspect
    import io
    import tokenize

    lines, _ = inspect.getsourcelines(cls)
    comments: dict[int, str] = {}  # line index -> comment text
    whole_line: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0] - 1
            comments[row] = tok.string.lstrip("#").strip()
            if not lines[row][: tok.start[1]].strip():
                whole_line.add(row)
    starts = {}  # field name -> first line index
    for i, line in enumerate(lines):
        m = re.match(r"    (\w+)\s*:", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            starts[m.group(1)] = i
    order = sorted(starts.items(), key=lambda kv: kv[1])
    out = {}
    for k, (name, first) in enumerate(order):
        end = order[k + 1][1] if k + 1 < len(order) else len(lines)
        above, j = [], first - 1
        while j >= 0 and j in whole_line:
            above.insert(0, comments[j])
            j -= 1
        trailing = [comments[i] for i in range(first, end) if i in comments and i not in whole_line]
        out[name] = " ".join(above + trailing)
    return out


def _sections() -> dict[str, type]:
    """'' (top-level keys) and every section's dotted name -> its dataclass."""
    out: dict[str, type] = {"": Config}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                out[_join(prefix, f.name)] = tp
                walk(tp, _join(prefix, f.name))

    walk(Config, "")
    return out


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
    else:
        return "(required)"
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value if value.strip() and value.isprintable() else json.dumps(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text if len(text) <= 70 else text[:67] + "..."


def help_config(section: str | None = None, width: int = 100) -> str:
    """Keys with their defaults and help, for ``launch/train.py --help-config [section]``.

    ``section`` is a section ('trainer', 'model.lora') or a key ('trainer.lr'); None = all.
    Raises ConfigError for a name that is neither.
    """
    import textwrap

    sections = _sections()
    keys = all_keys()
    if section is not None and section not in sections and section not in keys:
        near = difflib.get_close_matches(section, [s for s in sections if s] + keys, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"--help-config: no section or key {section!r}.{hint} Sections: "
                          f"{', '.join(s for s in sections if s)}.")
    out = []
    for name, cls in sections.items():
        if section is not None and not (name == section or name.startswith(section + ".")
                                        or section.rsplit(".", 1)[0] == name and section in keys):
            continue
        helps, rows = field_help(cls), []
        for f in dataclasses.fields(cls):
            key = _join(name, f.name)
            if dataclasses.is_dataclass(_hints(cls)[f.name]):
                continue
            if section is not None and section in keys and key != section:
                continue
            rows.append((f"{key} = {_default_text(f)}", helps.get(f.name, "")))
        if not rows:
            continue
        out.append(f"{name or 'top level'}:")
        for left, text in rows:
            out.append(f"  {left}")
            out += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ",
                                 break_on_hyphens=False, break_long_words=False)
        out.append("")
    out.append("Set any key in a recipe YAML or on the command line, e.g. trainer.lr=1e-6.")
    return "\n".join(out)


# ---------------------------------------------------------------- merging


def _at(where: str, line: int | None) -> str:
    """Source of one value: 'file.yaml:12' when the YAML loader recorded the line of its key."""
    return f"{where}:{line}" if line else where


def _unknown_key(full: str, name: str, prefix: str, siblings: list[str], where: str) -> ConfigError:
    every = _paths(Config, sections=True)
    guesses = [_join(prefix, s) for s in difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)]
    guesses += difflib.get_close_matches(full, all_keys(), n=3, cutoff=0.85)
    # the right name under the wrong section, e.g. 'rollout.lr' -> 'trainer.lr'
    leaf = full.rsplit(".", 1)[-1]
    guesses += [k for k in every if difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() >= 0.85]
    guesses = list(dict.fromkeys(guesses))[:3]
    msg = f"Unknown config key '{full}' (from {where})."
    if guesses:
        return ConfigError(msg + " Did you mean " + " or ".join(f"'{g}'" for g in guesses) + "?")
    section = f"under '{prefix}'" if prefix else "at the top level"
    return ConfigError(f"{msg} Valid keys {section}: {', '.join(siblings)}.")


def _type_error(key: str, tp: Any, value: Any, where: str, line: int | None) -> ConfigError:
    got = f"{value!r} ({type(value).__name__})"
    msg = f"{key}: expected {_describe(tp)}, got {got} from {_at(where, line)}."
    if value is None:
        msg += " null is only allowed for optional fields; give a value or drop the key to keep the default."
    elif isinstance(value, bool):
        msg += " true/false is not a number here; write the number you mean."
    return ConfigError(msg)


def _coerce(value: Any, tp: Any, key: str, where: str, line: int | None = None) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless.

    `where` names the source (a file or COMMAND_LINE); `line` is the line of the value's key.
    """
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise _type_error(key, tp, value, where, line)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if item is str and isinstance(value, str):
            return [value]  # `train_files: a.jsonl` means a list of one
        if not isinstance(value, list):
            raise _type_error(key, tp, value, where, line)
        return [_coerce(v, item, f"{key}[{i}]", where, line) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise _type_error(key, tp, value, where, line)
        return _build(inner, value, key, where)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if inner is bool and isinstance(value, bool):
        return value
    if inner is int and number and isinstance(value, int):
        return value
    if inner is float and number:
        return float(value)
    if inner is float and isinstance(value, str):
        try:
            return float(value)  # PyYAML reads 1e-6 (no dot) as a string
        except ValueError:
            pass
    if inner is str and (isinstance(value, str) or number):
        return value if isinstance(value, str) else str(value)
    raise _type_error(key, tp, value, where, line)


def _check_keys(cls: type, mapping: dict, prefix: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in names:
            full = _join(prefix, str(key))
            raise _unknown_key(full, str(key), prefix, names, _at(where, getattr(key, "line", None)))


def _build(cls: type, mapping: dict, prefix: str, where: str) -> Any:
    """A fresh `cls` from defaults plus `mapping` (used for list items such as reward functions)."""
    _check_keys(cls, mapping, prefix, where)
    kwargs = {str(k): _coerce(v, _hints(cls)[k], _join(prefix, k), where, getattr(k, "line", None))
              for k, v in mapping.items()}
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and f.name not in kwargs:
            raise ConfigError(f"{_join(prefix, f.name)} is required but missing (from {where}).")
    return cls(**kwargs)


def _merge(obj: Any, mapping: dict, prefix: str, where: str) -> None:
    """Merge a nested mapping into the dataclass `obj` in place; sections merge, leaves replace."""
    _check_keys(type(obj), mapping, prefix, where)
    for key, value in mapping.items():
        name, current = str(key), getattr(obj, key)
        if dataclasses.is_dataclass(current) and value is None:
            continue  # an empty section (`trainer:` with every child commented out) changes nothing
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _merge(current, value, _join(prefix, name), where)
        else:
            line = getattr(key, "line", None)
            setattr(obj, name, _coerce(value, _hints(type(obj))[name], _join(prefix, name), where, line))


# ---------------------------------------------------------------- YAML and the command line


class _Key(str):
    """A mapping key that remembers its line in the YAML file, for error messages."""

    line: int


class _Loader(yaml.SafeLoader):
    path = "<yaml>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)  # resolve `<<:` merge keys first
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str):
            key = _Key(key)
            key.line = key_node.start_mark.line + 1
            if key in out:  # YAML itself would silently keep only the last value
                first = next(k for k in out if k == key)
                raise ConfigError(
                    f"Duplicate key '{key}' in {loader.path}:{key.line} (first at line {first.line}). "
                    "YAML keeps only the last one, so one of them would be silently ignored; remove one."
                )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path!r}: {e.strerror}.") from None
    loader = _Loader(text)
    loader.path = path
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML:\n{e}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}  # an empty recipe changes nothing
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must be a mapping of sections (e.g. 'trainer:\\n  lr: 1.0e-6'), "
            f"got {type(data).__name__} at the top level."
        )
    return data


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse an override's text as YAML; a field of strings keeps the exact text typed."""
    inner, optional = _optional_inner(tp)
    stringy = inner is str or inner == list[str]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if stringy:
            return raw
        raise ConfigError(f"{key}: cannot parse {raw!r} from {COMMAND_LINE} as a YAML value ({e}).") from None
    if stringy and not isinstance(value, (str, list)) and not (value is None and optional):
        return raw  # model.name_or_path=123 means the string "123"
    return value


def _apply_override(cfg: Config, text: str) -> None:
    key, eq, raw = text.partition("=")
    key, parts = key.strip(), key.strip().split(".")
    if not eq or not all(parts):
        raise ConfigError(
            f"Malformed override {text!r}: expected key=value with a dotted key, "
            "e.g. trainer.lr=1e-6 or data.train_files=[a.jsonl,b.jsonl]."
        )
    obj, prefix = cfg, ""
    for i, name in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if name not in names:
            raise _unknown_key(key, name, prefix, names, COMMAND_LINE)
        tp, path = _hints(type(obj))[name], _join(prefix, name)
        if i == len(parts) - 1:
            break
        if not dataclasses.is_dataclass(getattr(obj, name)):
            raise ConfigError(
                f"Cannot set '{key}' from {COMMAND_LINE}: '{path}' is {_describe(tp)}, not a section. "
                f"Set it whole instead, e.g. {path}=<value>."
            )
        obj, prefix = getattr(obj, name), path
    value, current = _parse_value(raw, tp, key), getattr(obj, name)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        _merge(current, value, key, COMMAND_LINE)
    else:
        setattr(obj, name, _coerce(value, tp, key, COMMAND_LINE))


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then each `key=value` override in order.

    Does not call `validate`; entry points call it after loading.
    """
    cfg = Config()
    if path is not None:
        _merge(cfg, _read_yaml(os.fspath(path)), "", os.fspath(path))
    for text in overrides:
        _apply_override(cfg, text)
    return cfg


def parse_cli(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split argv into (`--config PATH` or None, [key=value overrides])."""
    path, overrides, args = None, [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or arg.startswith("--config="):
            if path is not None:
                raise ConfigError("--config was given twice; pass one recipe and change the rest with key=value.")
            if arg == "--config" and (not args or args[0].startswith("-")):
                raise ConfigError("--config needs a path, e.g. --config recipes/demo.yaml.")
            path = args.pop(0) if arg == "--config" else arg.split("=", 1)[1]
            if not path:
                raise ConfigError("--config needs a path, e.g. --config=recipes/demo.yaml.")
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(
                f"Unrecognised command-line argument {arg!r}. Expected --config PATH and key=value "
                "overrides, e.g. --config recipes/demo.yaml trainer.lr=1e-6 rollout.group_size=8."
            )
    return path, overrides


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    # multi-line strings (prompt templates) read best as literal blocks
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.SequenceNode:
    # short lists of scalars on one line ([0.9, 0.999]); lists of mappings as blocks
    flat = all(not isinstance(x, (dict, list)) for x in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (every key, in definition order) as YAML that `load_config` reads back."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    body = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# Resolved rlvr config; rerun with --config {path}\n{body}")


# ---------------------------------------------------------------- cross-field checks


def _divisors_near(n: int, target: int, k: int = 5) -> list[int]:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(sorted(divs, key=lambda d: abs(d - target))[:k])


def process_problems(cfg: Config, num_processes: int) -> list[str]:
    """How the rollout batch splits over ``num_processes`` ranks: what does not divide (empty = fine).

    The same rule training applies (``rlvr.trainer.micro_batching``), so ``rlvr.validate
    --num-processes N`` fails exactly where an N-process run would stop.
    """
    t, g, world = cfg.trainer, cfg.rollout.group_size, num_processes
    if min(t.prompts_per_step, t.num_minibatches, t.micro_batch_size, g, world) < 1:
        return []  # reported by the single-field checks
    if t.prompts_per_step % world:
        near = sorted({max(world, t.prompts_per_step // world * world), -(-t.prompts_per_step // world) * world})
        return [f"trainer.prompts_per_step={t.prompts_per_step} does not divide among {world} processes; use a "
                f"multiple of {world} so every rank gets the same number of prompts, e.g. trainer.prompts_per_step "
                f"in {near}."]
    local = t.prompts_per_step // world * g  # sequences per rank per step
    size = 1 if t.micro_batch_tokens is not None else t.micro_batch_size
    if local % (t.num_minibatches * size):
        what = f"trainer.num_minibatches={t.num_minibatches}"
        fix = f"pick a num_minibatches that divides {local}"
        if size > 1:
            what += f" x trainer.micro_batch_size={size}"
            fix = f"pick a micro_batch_size that divides {local // t.num_minibatches}"
        return [f"each of the {world} processes gets {t.prompts_per_step // world} prompts x {g} = {local} sequences "
                f"per step, which {what} does not divide; {fix}"]
    return []


def validate(cfg: Config, num_processes: int = 1) -> None:
    """Cross-field checks, run before any model loads; raises one ConfigError listing every problem.

    ``num_processes``: the ranks the run will have; the batch must split evenly over them.
    """
    m, d, r, rw, a, t, c = cfg.model, cfg.data, cfg.rollout, cfg.reward, cfg.algorithm, cfg.trainer, cfg.checkpoint
    problems: list[str] = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    def one_of(key: str, value: Any, allowed: tuple) -> None:
        check(value in allowed, f"{key}={value!r} is not supported; choose one of {', '.join(map(str, allowed))}.")

    check(bool(m.name_or_path.strip()), "model.name_or_path is empty: there is no policy to train. "
          "Set it to a local folder or hub id, e.g. model.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct.")
    one_of("model.dtype", m.dtype, DTYPES)
    one_of("model.attn_implementation", m.attn_implementation, ATTN_IMPLEMENTATIONS)
    if m.attn_implementation.startswith("flash_attention"):
        import importlib.util

        package = "flash_attn" if m.attn_implementation == "flash_attention_2" else "flash_attn_interface"
        check(importlib.util.find_spec(package) is not None,
              f"model.attn_implementation={m.attn_implementation} needs the {package} package, which is not installed "
              "(pip install flash-attn --no-build-isolation, on a CUDA machine); or use model.attn_implementation=sdpa.")
    check(bool(d.train_files) and all(f.strip() for f in d.train_files), "data.train_files is empty: training needs prompts. "
          "Set it to one file or a list, e.g. data.train_files=[train.jsonl].")
    one_of("data.format", d.format, DATA_FORMATS)
    check("{question}" in d.prompt_template, "data.prompt_template has no '{question}' placeholder, so the "
          "model would never see the question. Add {question} where the question text belongs.")
    check(1 <= d.min_pixels <= d.max_pixels, f"data.min_pixels={d.min_pixels} must be >= 1 and <= data.max_pixels="
          f"{d.max_pixels}: images are resized into that range. Lower min_pixels or raise max_pixels.")
    check(d.max_prompt_tokens >= 1, f"data.max_prompt_tokens={d.max_prompt_tokens} leaves no room for a prompt; use e.g. 2048.")
    check(r.group_size >= 2, f"rollout.group_size={r.group_size}: group-normalised advantages compare each response "
          "with the others for the same prompt, so a group needs at least 2. Set rollout.group_size=2 or more (8 is typical).")
    check(r.temperature > 0, f"rollout.temperature={r.temperature} must be > 0: the policy loss needs sampled "
          "responses whose log-probs match the policy; use 1.0.")
    check(0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]; 1.0 turns nucleus sampling off.")
    check(r.top_k >= 0, f"rollout.top_k={r.top_k} must be >= 0; 0 turns top-k sampling off.")
    check(r.max_new_tokens >= 1, f"rollout.max_new_tokens={r.max_new_tokens} must be >= 1 so there is a response to reward.")
    check(r.micro_batch_size >= 1, f"rollout.micro_batch_size={r.micro_batch_size} must be >= 1 (sequences per generate call).")
    check(0 <= r.min_new_tokens <= r.max_new_tokens, f"rollout.min_new_tokens={r.min_new_tokens} must be between 0 and "
          f"rollout.max_new_tokens={r.max_new_tokens}.")
    one_of("reward.answer_extraction", rw.answer_extraction, ANSWER_EXTRACTIONS)
    check(bool(rw.functions), "reward.functions is empty: every response would score 0 and nothing would be learned. "
          "Add one, e.g. reward.functions=[{name: 'rlvr.rewards:numeric_reward'}].")
    for i, fn in enumerate(rw.functions):
        module, sep, func = fn.name.partition(":")
        check(bool(sep and module.strip() and func.strip()), f"reward.functions[{i}].name={fn.name!r} must be an "
              "import path 'module:function' so it can be imported, e.g. 'rlvr.rewards:numeric_reward'.")
    one_of("algorithm.loss", a.loss, LOSS_NAMES)
    check(a.aggregation is None or a.aggregation in AGGREGATIONS, f"algorithm.aggregation={a.aggregation!r} is not "
          f"supported; choose one of {', '.join(AGGREGATIONS)}, or null for the loss's own default.")
    check(a.entropy_coef >= 0, f"algorithm.entropy_coef={a.entropy_coef} must be >= 0 (0 = no entropy bonus; "
          "a negative one would push the policy to collapse). The demo uses 0.02.")
    for key, tau in (("algorithm.tau_pos", a.tau_pos), ("algorithm.tau_neg", a.tau_neg)):
        check(tau > 0, f"{key}={tau} must be > 0: SAPO's gate is sigmoid(tau * (ratio - 1)) * 4 / tau. Use e.g. 1.0.")
    check(t.max_steps >= 1, f"trainer.max_steps={t.max_steps} must be >= 1 (RL steps to run).")
    check(t.lr >= 0, f"trainer.lr={t.lr} must be >= 0; a negative rate would ascend the loss.")
    one_of("trainer.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    check(t.warmup_steps >= 0, f"trainer.warmup_steps={t.warmup_steps} must be >= 0 (0 = no warmup).")
    check(0 <= t.min_lr_ratio <= 1, f"trainer.min_lr_ratio={t.min_lr_ratio} must be in [0, 1] (a fraction of trainer.lr).")
    check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
          f"trainer.adam_betas={t.adam_betas} must be two numbers in [0, 1), e.g. [0.9, 0.999].")
    for key, n in (("trainer.prompts_per_step", t.prompts_per_step), ("trainer.num_minibatches", t.num_minibatches),
                   ("trainer.micro_batch_size", t.micro_batch_size)):
        check(n >= 1, f"{key}={n} must be >= 1.")
    check(t.micro_batch_tokens is None or t.micro_batch_tokens >= 1,
          f"trainer.micro_batch_tokens={t.micro_batch_tokens} must be a positive number of tokens per micro-batch "
          "(text rows padded to the longest + vision patches), e.g. 16384, or null to use trainer.micro_batch_size.")
    batch = t.prompts_per_step * r.group_size  # sequences per rollout batch
    if min(t.prompts_per_step, t.num_minibatches, t.micro_batch_size, r.group_size) >= 1:
        if batch % t.num_minibatches:
            check(False, f"trainer.num_minibatches={t.num_minibatches} does not divide the rollout batch of "
                  f"trainer.prompts_per_step * rollout.group_size = {t.prompts_per_step} * {r.group_size} = {batch} "
                  "sequences, so minibatches would be uneven. Use a divisor of "
                  f"{batch}, e.g. trainer.num_minibatches in {_divisors_near(batch, t.num_minibatches)}.")
        elif t.micro_batch_tokens is None and (mini := batch // t.num_minibatches) % t.micro_batch_size:
            check(False, f"trainer.micro_batch_size={t.micro_batch_size} does not divide each minibatch of "
                  f"{batch} / {t.num_minibatches} = {mini} sequences, so gradient accumulation would be uneven. "
                  f"Use a divisor of {mini}, e.g. trainer.micro_batch_size in {_divisors_near(mini, t.micro_batch_size)}.")
    lora = m.lora
    check(lora.rank >= 0,
          f"model.lora.rank={lora.rank} must be >= 0 (0 = no LoRA, full fine-tuning; 8 to 64 is typical).")
    if lora.rank > 0:
        check(lora.alpha > 0, f"model.lora.alpha={lora.alpha} must be > 0: adapter updates are scaled by alpha / rank.")
        check(0 <= lora.dropout < 1, f"model.lora.dropout={lora.dropout} must be in [0, 1).")
        try:
            re.compile(lora.target_modules)
        except re.error as e:
            check(False, f"model.lora.target_modules={lora.target_modules!r} is not a valid regular expression "
                  f"({e}); it is matched in full against module names such as "
                  "'model.language_model.layers.0.self_attn.q_proj'.")
    check(t.collective_timeout_s >= 1, f"trainer.collective_timeout_s={t.collective_timeout_s} must be >= 1 second; "
          "it bounds how long a rank waits for the others before failing (1800 is a safe default).")
    check(cfg.resume is None or bool(cfg.resume.strip()), "resume is empty: use resume=auto, a checkpoint folder, "
          "or leave it unset for a fresh run.")
    check(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last} must be >= 1, or resuming would find no checkpoint.")
    check(c.every_steps >= 0, f"checkpoint.every_steps={c.every_steps} must be >= 0 (0 = only at the end).")
    e = cfg.eval
    check(e.k >= 1, f"eval.k={e.k} must be >= 1 (sampled responses per validation prompt; 8 is typical).")
    check(e.every_steps >= 0, f"eval.every_steps={e.every_steps} must be >= 0 (0 = evaluate only at the end).")
    check(e.max_prompts is None or e.max_prompts >= 1, f"eval.max_prompts={e.max_prompts} must be >= 1, or null for all.")
    check(e.temperature is None or e.temperature > 0, f"eval.temperature={e.temperature} must be > 0, or null for rollout.temperature.")
    check(e.max_new_tokens is None or e.max_new_tokens >= 1, f"eval.max_new_tokens={e.max_new_tokens} must be >= 1, or null.")
    check(cfg.log.samples_every >= 0 and cfg.log.samples_per_step >= 0, "log.samples_every and log.samples_per_step "
          "must be >= 0 (0 turns the samples pages off).")
    check(cfg.log.print_every >= 0, f"log.print_every={cfg.log.print_every} must be >= 0 (0 = about 20 lines per run).")
    if not problems:  # the per-rank split, once the global batch itself is sound
        problems += process_problems(cfg, num_processes)
    if problems:
        lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
        raise ConfigError(f"Invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")
