"""The policy's weights as an inference engine loads them, streamed a bucket at a time.

After an update, an engine that holds its own copy of the weights (vLLM) needs every tensor
of the policy under the plain transformers model's state-dict names, e.g.
``model.language_model.layers.0.self_attn.q_proj.weight`` (vLLM's ``reload_weights(...,
is_checkpoint_format=True)`` maps these names itself). ``iter_weight_buckets`` yields them:

- Names and tensors: the parameters and persistent buffers of ``model.state_dict()``, in its
  order. A tied weight is sent once, under its first name: the input embeddings
  (``...embed_tokens.weight``), never ``lm_head.weight`` (transformers registers the
  embeddings first; vLLM ties the head itself when the config says so).
- LoRA (peft): every adapted ``Linear`` is sent as one merged weight under the base layer's
  plain name: ``W + sum_a scale_a * (B_a @ A_a)`` over the active adapters not yet merged
  (``scale = alpha / rank``), summed in fp32 and rounded once to W's dtype (peft rounds the
  delta first; in fp32 both are the same). The model is not changed (no ``merge_and_unload``);
  dropout is a training-time input mask and does not enter the merge. peft's names
  (``base_model.model.``, ``.base_layer``, ``lora_A``/``lora_B``) never appear: the engine
  loads the base architecture. Vision-tower adapters are merged like any other.
- dtype: the model's own (bf16 under DeepSpeed bf16), or ``dtype`` for floating tensors.
  Tensors are detached. Outside ZeRO-3 an unmerged tensor is the live parameter itself (no
  copy): consume it before the next optimizer step.
- ZeRO-3 (parameters with ``ds_id``): each bucket's parameters (a LoRA layer's W, A and B
  together) are gathered with ``deepspeed.zero.GatheredParameters``, copied, and partitioned
  again before the bucket is yielded, so beyond its shards a rank holds at most one gathered
  bucket plus its copies. Every rank must iterate the whole stream in the same order: each
  bucket is a collective (an early ``break`` on one rank hangs the others).
- Buckets: at most ``bucket_bytes`` each, counting what is gathered for a tensor (a LoRA
  weight counts its adapters too); a single larger tensor is a bucket of its own.

``iter_weights`` flattens the buckets into ``(name, tensor)`` pairs (what vLLM's
``weights_iterator`` takes) and drops its own reference to each tensor once handed out.
``weight_stats`` says how many tensors and bytes a sync moves without gathering anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from rlvr.lora import inner_model, is_lora

DEFAULT_BUCKET_BYTES = 256 * 2**20  # a few layers of a 7B model; bounds the extra memory of a ZeRO-3 sync


@dataclass
class WeightStats:
    """What a stream handed out so far: tensors, bytes (in the sent dtype) and buckets."""

    tensors: int = 0
    bytes: int = 0
    buckets: int = 0


@dataclass
class _Adapter:
    A: torch.Tensor  # [r, in] lora_A weight
    B: torch.Tensor  # [out, r] lora_B weight
    scale: float  # alpha / r
    fan_in_fan_out: bool  # the base layer stores W as [in, out]


@dataclass
class _Entry:
    """One tensor the engine receives: its plain name, its source, the adapters merged into it."""

    name: str
    tensor: torch.Tensor  # a parameter or persistent buffer of the model (a LoRA layer's base weight)
    dtype: torch.dtype  # the dtype it is sent in
    adapters: list[_Adapter] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return _numel(self.tensor) * self.dtype.itemsize

    @property
    def sources(self) -> list[torch.Tensor]:
        return [self.tensor] + [t for a in self.adapters for t in (a.A, a.B)]

    @property
    def cost(self) -> int:
        """Bytes this entry occupies while its bucket is gathered: the sent tensor and its adapters."""
        return self.nbytes + sum(_numel(t) * t.element_size() for a in self.adapters for t in (a.A, a.B))


def _numel(tensor: torch.Tensor) -> int:
    """Full element count, also of a ZeRO-3 partitioned parameter (whose ``numel()`` is 0)."""
    return int(tensor.ds_numel) if hasattr(tensor, "ds_id") else tensor.numel()


def _check_unwrapped(model) -> None:
    if type(model).__name__ in ("DeepSpeedEngine", "DistributedDataParallel"):
        raise ValueError(f"weight sync got a {type(model).__name__}; pass the policy unwrapped "
                         "(accelerator.unwrap_model(prepared)), whose names are the transformers model's")


def _lora_layers(model) -> dict:
    """Module name -> peft LoRA layer, in the transformers model under the peft wrapper."""
    if not is_lora(model):
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in inner_model(model).named_modules() if isinstance(m, LoraLayer)}


def _adapters(name: str, layer) -> list[_Adapter]:
    """The unmerged active adapters of one LoRA layer; a clear error for kinds this merge does not do."""
    from peft.tuners.lora import Linear

    out = []
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A or adapter in layer.merged_adapters:
            continue  # not on this layer, or already inside W
        if not isinstance(layer, Linear) or adapter in getattr(layer, "lora_variant", {}) \
                or layer.lora_bias.get(adapter, False):
            raise ValueError(f"weight sync merges plain LoRA on Linear layers; {name} has a "
                             f"{type(layer).__name__} adapter {adapter!r} with a variant (DoRA) or lora_bias. "
                             "Use rlvr's model.lora settings (plain LoRA on Linear layers).")
        out.append(_Adapter(layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                            float(layer.scaling[adapter]), bool(layer.fan_in_fan_out)))
    return out


def _owner(key: str, layers: dict) -> str | None:
    """The LoRA layer a state-dict key belongs to (the longest module-name prefix), or None."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in layers:
            return prefix
    return None


def _plan(model, dtype: torch.dtype | None) -> list[_Entry]:
    """Every tensor to send, in state-dict order, named as the plain transformers model names it."""
    _check_unwrapped(model)
    layers = _lora_layers(model)
    entries, seen = [], set()
    for key, tensor in inner_model(model).state_dict(keep_vars=True).items():
        if "modules_to_save." in key or ".original_module." in key:
            raise ValueError(f"weight sync does not handle peft's modules_to_save ({key}); rlvr's LoRA trains "
                             "adapters only")
        if id(tensor) in seen:
            continue  # a tied weight (lm_head = embed_tokens): sent once, under its first name
        seen.add(id(tensor))
        sent = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        owner = _owner(key, layers)
        if owner is None:
            entries.append(_Entry(key, tensor, sent))
            continue
        rest = key[len(owner) + 1:]
        if not rest.startswith("base_layer."):
            continue  # the adapter's own tensors (lora_A, lora_B): merged into the base weight below
        name = f"{owner}.{rest.removeprefix('base_layer.')}"
        adapters = _adapters(owner, layers[owner]) if rest == "base_layer.weight" else []
        entries.append(_Entry(name, tensor, sent, adapters))
    return entries


def weight_stats(model, dtype: torch.dtype | None = None) -> WeightStats:
    """Tensors and bytes one sync of ``model`` sends (nothing gathered; ``buckets`` left 0)."""
    entries = _plan(model, dtype)
    return WeightStats(tensors=len(entries), bytes=sum(e.nbytes for e in entries))


def _buckets(entries: list[_Entry], bucket_bytes: int) -> Iterator[list[_Entry]]:
    """Consecutive entries whose costs sum to at most ``bucket_bytes`` (a larger entry alone)."""
    bucket, size = [], 0
    for entry in entries:
        if bucket and size + entry.cost > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append(entry)
        size += entry.cost
    if bucket:
        yield bucket


def _gathered(params: list[torch.Tensor]):
    """Full ZeRO-3 parameters inside the context (a collective), partitioned again on exit."""
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    # modifier_rank=None: nothing is written back, no broadcast on exit.
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


@torch.no_grad()
def _value(entry: _Entry, copy: bool) -> torch.Tensor:
    """The tensor to send: merged with its adapters, in the sent dtype, a copy when ``copy``."""
    weight = entry.tensor.detach()
    if entry.adapters:
        merged = weight.float()  # [out, in]; a new tensor unless W is fp32 (then never written to)
        for a in entry.adapters:
            delta = a.B.detach().float() @ a.A.detach().float()  # [out, in]
            merged = merged + (delta.T if a.fan_in_fan_out else delta) * a.scale
        return merged.to(entry.dtype)
    out = weight.to(entry.dtype)
    return out.clone() if copy and out.data_ptr() == weight.data_ptr() else out


def iter_weight_buckets(model, bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                        stats: WeightStats | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The policy's weights as ``[(name, tensor), ...]`` buckets (see the module docstring).

    ``model``: the unwrapped transformers or peft model, maybe ZeRO-3 partitioned.
    ``bucket_bytes``: the most bytes per bucket (a larger tensor is alone in its own).
    ``dtype``: send floating tensors in this dtype (None: the model's).
    ``stats``: counts tensors, bytes and buckets as they are handed out.
    Under ZeRO-3 every rank must consume the whole iterator (each bucket is a collective).
    """
    if not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes={bucket_bytes!r} must be a positive number of bytes "
                         f"(default {DEFAULT_BUCKET_BYTES} = {DEFAULT_BUCKET_BYTES // 2**20} MiB)")
    for bucket in _buckets(_plan(model, dtype), bucket_bytes):
        params = [t for e in bucket for t in e.sources if hasattr(t, "ds_id")]
        with _gathered(params):
            # Copies of the gathered tensors outlive the context; the gathered ones are freed on exit.
            out = [(e.name, _value(e, copy=bool(params))) for e in bucket]
        if stats is not None:
            stats.tensors += len(out)
            stats.bytes += sum(t.numel() * t.element_size() for _, t in out)
            stats.buckets += 1
        yield out
        del out  # before the next gather, whatever the caller still holds


def iter_weights(model, bucket_bytes: int = DEFAULT_BUCKET_BYTES, dtype: torch.dtype | None = None,
                 stats: WeightStats | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``iter_weight_buckets`` as ``(name, tensor)`` pairs (vLLM's ``weights_iterator``).

    Each tensor is released here as soon as it is handed out, so a consumer that copies it
    and lets go keeps the extra memory within about one bucket.
    """
    for bucket in iter_weight_buckets(model, bucket_bytes, dtype, stats):
        bucket.reverse()
        while bucket:
            yield bucket.pop()
