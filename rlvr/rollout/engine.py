"""The rollout engine interface: what the trainer, the evaluator, data synthesis and tool rollouts call.

An engine turns prompts (token ids plus processed images, ``rlvr.batch.PromptInputs``) into
sampled responses (``rlvr.batch.Response``: token ids, the log-probs of the distribution each
token was drawn from, and why it ended). A multi-turn rollout continues a conversation by
appending tokens and images to a prompt's token ids (``rlvr.batch.continue_prompt``); nothing
the model produced is ever decoded and tokenised again.

Engines: ``hf`` (``rlvr.rollout.hf``, transformers' generate in the training process, the
reference) and ``vllm`` (``rlvr.rollout.vllm``, a colocated vLLM engine per process). ``make_engine``
builds the one ``rollout.engine`` names; vLLM is imported only when it is selected.

Seeds: one per prompt; the j-th sample of a prompt with seed s draws from the stream
``mix_seed(s, j)``. Each engine reproduces its own samples from the same seeds and weights
(on any rank, in any batch); two engines give different samples for the same seed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from rlvr.batch import PromptInputs, Response
from rlvr.config import RolloutConfig


@dataclass
class SyncReport:
    """What one weight sync moved: tensors, bytes and seconds (logged as ``rollout/sync_*``)."""

    tensors: int
    bytes: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"rollout/sync_s": self.seconds, "rollout/sync_mib": self.bytes / 2**20}


class RolloutEngine(ABC):
    """Samples responses for prompts. ``settings`` holds the sampling parameters (``rollout.*``):
    ``group_size`` samples per prompt, temperature, top-p, top-k, min/max new tokens;
    ``stop_ids`` end a response (the stop token is kept in it)."""

    name = "engine"

    def __init__(self, settings: RolloutConfig, stop_ids: list[int], pad_id: int):
        self.settings, self.stop_ids, self.pad_id = settings, list(stop_ids), pad_id

    @abstractmethod
    def generate(self, prompts: list[PromptInputs], seeds: list[int] | None = None, *,
                 settings: RolloutConfig | None = None, greedy: bool = False) -> list[Response]:
        """``settings.group_size`` responses per prompt (``settings`` defaults to the engine's own),
        prompt-major: the G responses of prompt 0 first. ``seeds``: one per prompt (None: drawn
        from torch's global generator). ``greedy``: the most likely token at every step."""

    def sync_weights(self, model) -> SyncReport | None:
        """Make the next samples come from ``model``'s current weights (after an update).

        ``model`` is the policy as a transformers (or peft) model, unwrapped from accelerate; under
        ZeRO-3 its parameters are partitioned and the engine gathers them a few at a time.
        Returns what was moved, or None when the engine samples from the live model itself.
        """
        return None

    def sleep(self) -> None:
        """Free what the engine can during the update (vLLM on GPU: the KV cache, maybe the weights)."""

    def wake(self) -> None:
        """Undo ``sleep`` before the next ``generate``."""

    def close(self) -> None:
        """Release the engine's resources (processes, memory)."""
