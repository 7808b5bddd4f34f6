"""Trained models, saved and found again: a model folder, a run, a checkpoint, or a LoRA adapter.

``save_trained`` writes the policy at the end of a run (a transformers folder, or the LoRA
adapter, with the processor; partitioned ZeRO-3 weights gathered one at a time).
``resolve_model(path)`` says where a trained model's weights, processor and run config are;
``load_trained(source, ...)`` loads it, adapters merged and checkpoint weights laid over the
base model. ``rlvr.evaluate``'s command line uses both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


class ModelNotFound(ValueError):
    """--model does not point at something loadable; the message says what was found."""


@dataclass
class ModelSource:
    weights_dir: str  # Hugging Face model folder or hub id to load with from_pretrained (the base model)
    state_dict_file: str | None  # a checkpoint's model.safetensors to load over it
    processor_dir: str  # folder (or hub id) holding the processor
    run_config: str | None  # the run's config.yaml, when the model belongs to a run
    label: str  # short name for output folders: "final", "step_000060", or the folder name
    adapter_dir: str | None = None  # a peft LoRA adapter folder to merge into the base model


def _is_hf_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _has_processor(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in
               ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"))


def _run_base_model(run_config: str | None) -> str | None:
    import yaml

    if not run_config:
        return None
    with open(run_config, encoding="utf-8") as f:
        return ((yaml.safe_load(f) or {}).get("model") or {}).get("name_or_path") or None


def resolve_model(path: str) -> ModelSource:
    """Where to load a model from: a Hugging Face folder or hub id; a run folder (its ``final/``,
    else its latest checkpoint); a checkpoint ``RUN/checkpoints/step_N`` (its weights over the
    run's base model); or a LoRA adapter folder (merged into its base model)."""
    if not os.path.exists(path):
        if path.count("/") == 1 and not path.startswith((".", "/")):
            return ModelSource(path, None, path, None, path.replace("/", "_"))  # a hub id
        raise ModelNotFound(f"--model {path}: no such file or folder")
    path = os.path.abspath(path)
    label = os.path.basename(path.rstrip("/"))
    if os.path.isfile(os.path.join(path, "config.yaml")) and not (_is_hf_model(path) or _is_adapter(path)):
        final = os.path.join(path, "final")  # a run folder
        if _is_hf_model(final) or _is_adapter(final):
            return resolve_model(final)
        from rlvr.checkpoint import latest_checkpoint

        latest = latest_checkpoint(path)
        if latest:
            return resolve_model(latest)
        raise ModelNotFound(f"--model {path} is a run folder without final/ or a complete checkpoint")
    parent = os.path.dirname(path)
    if _is_hf_model(path) or _is_adapter(path):
        run_config = os.path.join(parent, "config.yaml")
        run_config = run_config if os.path.isfile(run_config) else None
        base, adapter = path, None
        if _is_adapter(path) and not _is_hf_model(path):
            with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
                base = json.load(f).get("base_model_name_or_path") or _run_base_model(run_config)
            if not base:
                raise ModelNotFound(f"{path} is a LoRA adapter that names no base model (base_model_name_or_path)")
            adapter = path
        processor_dir = path if _has_processor(path) else (_run_base_model(run_config) or base)
        return ModelSource(base, None, processor_dir, run_config, label, adapter)
    weights = os.path.join(path, "model.safetensors")
    run_config = os.path.join(os.path.dirname(parent), "config.yaml")  # RUN/checkpoints/step_N -> RUN
    if os.path.isfile(weights) and os.path.isfile(run_config):
        base = _run_base_model(run_config)
        if not base:
            raise ModelNotFound(f"{run_config} names no model.name_or_path to load the checkpoint {path} into")
        return ModelSource(base, weights, base, run_config, label)
    if os.path.isdir(os.path.join(path, "pytorch_model")) or any(n.endswith(".pt") for n in os.listdir(path)):
        raise ModelNotFound(
            f"--model {path} looks like a DeepSpeed checkpoint (sharded optimizer states); consolidate it first "
            "with the zero_to_fp32.py script DeepSpeed puts next to it, or evaluate the run's final/ model")
    raise ModelNotFound(
        f"--model {path}: not a Hugging Face model folder (no config.json), a LoRA adapter (adapter_config.json), "
        "a run folder (config.yaml) or a checkpoint (model.safetensors inside RUN/checkpoints/step_N)")


def _match_prefix(state: dict, model_keys: set[str]) -> dict:
    """Strip the wrappers' name prefixes a checkpoint may carry (``module.``, rlvr's ``policy.``)."""
    for _ in range(3):
        if not state or any(k in model_keys for k in state):
            return state
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or not all("." in k for k in state):
            return state
        cut = len(heads.pop()) + 1
        state = {k[cut:]: v for k, v in state.items()}
    return state


def load_trained(source: ModelSource, dtype: str, attn_implementation: str, device: str, lora=None):
    """The model of ``source`` in eval mode on ``device``: adapters merged, checkpoint weights loaded.

    ``lora``: the run's ``model.lora`` settings, needed for a checkpoint of a LoRA run.
    """
    from rlvr.models import load_model

    model = load_model(source.weights_dir, dtype, attn_implementation)
    if source.adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter_dir).merge_and_unload()
    if source.state_dict_file:
        from safetensors.torch import load_file

        state = load_file(source.state_dict_file)
        is_lora = any(".lora_A." in k for k in state)
        if is_lora:
            if lora is None or not lora.rank:
                raise ModelNotFound(f"{source.state_dict_file} holds LoRA adapters but the run's config has no "
                                    "model.lora settings to rebuild them; evaluate the run's final/ adapter instead")
            from rlvr.lora import apply_lora

            model = apply_lora(model, lora)
        params = dict(model.named_parameters(remove_duplicate=False))
        state = _match_prefix(state, set(params))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied weights (embedding and output head) are stored once; either name may be the one kept.
        names_of: dict[int, set[str]] = {}
        for name, p in params.items():
            names_of.setdefault(p.data_ptr(), set()).add(name)
        missing = [k for k in missing if not (k in params and names_of[params[k].data_ptr()] & state.keys())]
        if missing or unexpected:
            raise ModelNotFound(f"{source.state_dict_file} does not match the model in {source.weights_dir}: "
                                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        if is_lora:
            model = model.merge_and_unload()
    return model.to(device).eval()


# --------------------------------------------------------------------------- saving


def save_trained(accelerator, policy, processor, out_dir: str) -> None:
    """The final policy: a transformers folder, or under LoRA the adapter; with the processor.

    Every rank calls it (gathering ZeRO-3 weights is a collective); the main process writes.
    """
    from rlvr.distributed import zero_stage
    from rlvr.lora import is_lora, save_adapter
    from rlvr.models import save_processor

    acc = accelerator
    lora = is_lora(policy)
    # Weights are saved under the model's own module names (transformers >= 5 format):
    # reverting to a checkpoint's original names goes wrong for models loaded under ZeRO-3.
    if zero_stage(acc) == 3 or lora:  # partitioned weights (or only the adapter): collect them
        state = gathered_state(acc, policy, trainable_only=lora)
        if acc.is_main_process:
            if lora:
                save_adapter(policy, out_dir, state)
            else:
                policy.save_pretrained(out_dir, state_dict=state, safe_serialization=True, save_original_format=False)
    elif acc.is_main_process:  # every rank holds the full, current weights
        policy.save_pretrained(out_dir, safe_serialization=True, save_original_format=False)
    if acc.is_main_process:
        save_processor(processor, out_dir)
    acc.wait_for_everyone()


def gathered_state(accelerator, policy, trainable_only: bool) -> dict:
    """Full CPU copies of the policy's tensors by state-dict name, on the main process.

    Under ZeRO-3 each parameter is gathered in turn (a collective: every rank calls this),
    so at most one full parameter is materialised beyond the shards at a time.
    """
    from rlvr.distributed import zero_stage

    params = dict(policy.named_parameters(remove_duplicate=False))  # tied weights under each name
    zero3 = zero_stage(accelerator) == 3
    state, seen = {}, set()
    for name, tensor in policy.state_dict(keep_vars=True).items():
        param = params.get(name)
        if trainable_only and (param is None or not param.requires_grad):
            continue
        if param is not None:
            if id(param) in seen:
                continue  # a tied weight (output head = input embeddings): saved once
            seen.add(id(param))
        if zero3 and param is not None and hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                if accelerator.is_main_process:
                    state[name] = param.detach().cpu().clone()
        elif accelerator.is_main_process:
            state[name] = tensor.detach().cpu().clone()
    return state
