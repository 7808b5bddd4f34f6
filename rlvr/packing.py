"""Micro-batches by a budget of text plus vision tokens (``trainer.micro_batch_tokens``).

A fixed number of sequences per micro-batch has to fit the worst case: eight long responses
to a four-image prompt. Most micro-batches are far smaller, so memory sits idle. A token
budget packs many short samples together and gives a long one fewer companions.

Costs, in tokens (what the forward's activations grow with):

    sample      length_i + patches_i
    micro-batch len(idx) * max_{i in idx} length_i + sum over the distinct prompts in idx of patches

``length_i`` is the sample's unpadded sequence (prompt tokens, image placeholders included,
plus response tokens); rows are padded to the longest, hence the ``len * max``. ``patches_i``
is what the vision tower sees: sum over the sample's images of t * h * w from
``image_grid_thw`` (before the spatial merge into placeholders). Samples of one prompt share
its images, and the training forward encodes them once per micro-batch
(``rlvr.multimodal.shared_image_features``), so they are counted once; a multi-turn response's
own images (tool observations) are its own and counted with it.

The loss divides by minibatch-wide counts (``rlvr.update``), so how a minibatch is cut into
micro-batches changes memory and speed, never the gradient (up to float summation order).
Every function here is pure: indices in, lists of indices out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rlvr.batch import PromptInputs, Response


class SampleCosts(NamedTuple):
    """Per sample of a rollout batch, indexed like its responses."""

    lengths: list[int]  # prompt + response tokens
    patches: list[int]  # vision-tower patches of the sample's images (0 for text only)
    images: list[int]  # the first sample with the same prompt: samples sharing it share the images
    own_patches: list[int] | None = None  # patches of the sample's own images (tool observations); None: none


def sample_costs(prompts: Sequence[PromptInputs], responses: Sequence[Response]) -> SampleCosts:
    """The costs of each sample; ``prompts[i]`` is the prompt of ``responses[i]``.

    Prompts are told apart by identity, as ``rlvr.batch.collate_sequences`` does when it
    marks the rows that share images.
    """
    first: dict[int, int] = {}  # id(prompt) -> first sample using it
    return SampleCosts(
        lengths=[len(p.input_ids) + len(r.token_ids) for p, r in zip(prompts, responses)],
        patches=[0 if p.image_grid_thw is None else int(p.image_grid_thw.prod(-1).sum()) for p in prompts],
        images=[first.setdefault(id(p), i) for i, p in enumerate(prompts)],
        own_patches=[0 if getattr(r, "image_grid_thw", None) is None else int(r.image_grid_thw.prod(-1).sum())
                     for r in responses],
    )


def micro_batch_cost(idx: Sequence[int], costs: SampleCosts) -> int:
    """Tokens one micro-batch puts through the model: padded text rows plus each prompt's patches once."""
    if not idx:
        return 0
    patches = {costs.images[i]: costs.patches[i] for i in idx}  # one entry per distinct prompt
    own = sum(costs.own_patches[i] for i in idx) if costs.own_patches else 0  # observations: each its own
    return len(idx) * max(costs.lengths[i] for i in idx) + sum(patches.values()) + own


def pack_by_tokens(indices: Sequence[int], costs: SampleCosts, budget: int) -> tuple[list[list[int]], int]:
    """Cut one minibatch into micro-batches whose cost stays within ``budget``.

    Samples are sorted by length, longest first (ties keep their order in ``indices``), so
    neighbours pad to nearly the same width; consecutive samples join the open micro-batch
    while its cost stays <= ``budget``. A sample whose own cost exceeds the budget cannot be
    split: it gets a micro-batch to itself.

    Returns ``(micro_batches, over_budget)``: lists of sample indices, and how many samples
    were over budget by themselves.
    """
    if budget < 1:
        raise ValueError(f"the token budget must be >= 1, got {budget}")
    order = sorted(indices, key=lambda i: -costs.lengths[i])  # sorted() is stable: ties keep minibatch order
    micro: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and micro_batch_cost(current + [i], costs) > budget:
            micro.append(current)
            current = []
        current.append(i)
    if current:
        micro.append(current)
    over = sum(1 for i in indices if micro_batch_cost([i], costs) > budget)
    return micro, over


def split_to_count(micro: Sequence[Sequence[int]], count: int, costs: SampleCosts) -> list[list[int]]:
    """Split micro-batches until there are exactly ``count``; the costliest splittable one goes first.

    Every rank must run the same number of forward/backward passes per optimizer step
    (DDP and DeepSpeed synchronise on them), so a rank that packed fewer micro-batches than
    another splits some. Each split cuts where the larger half is cheapest. Micro-batches
    keep their order, and none is ever empty.
    """
    out = [list(m) for m in micro]
    n = sum(len(m) for m in out)
    if count < len(out) or count > n:
        raise ValueError(f"cannot turn {len(out)} micro-batches of {n} samples into {count}: "
                         f"the count must be between {len(out)} and {n}")
    while len(out) < count:
        j = max((j for j, m in enumerate(out) if len(m) > 1), key=lambda j: micro_batch_cost(out[j], costs))
        m = out[j]
        cut = min(range(1, len(m)), key=lambda c: max(micro_batch_cost(m[:c], costs), micro_batch_cost(m[c:], costs)))
        out[j:j + 1] = [m[:cut], m[cut:]]
    return out
