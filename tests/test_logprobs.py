"""Log-probs the rollout saw equal the ones the update computes; accumulation is exact.

Batches mix left-padded prompts of very different lengths, several images of different
sizes per prompt, and text-only prompts, for every supported family (fp32).
"""

import pytest
import torch
from PIL import Image

from rlvr.config import RolloutConfig
from rlvr.logprobs import response_logprobs
from rlvr.models import load_model, load_processor, never_sample_ids, stop_token_ids
from rlvr.batch import PromptInputs, collate_sequences
from rlvr.rollout import generate


def _prompt(processor, text: str, sizes: list[tuple[int, int]]) -> PromptInputs:
    images = [Image.new("RGB", s, (37 * i % 255, 90, 200 - 30 * i)) for i, s in enumerate(sizes)]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    chat = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)
    enc = processor(text=[chat], images=images or None, return_tensors="pt")
    return PromptInputs(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc.get("pixel_values"),
                        enc.get("image_grid_thw"))


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    model = load_model(tiny_model_dir, dtype="float32").eval()
    prompts = [
        _prompt(processor, "What colour is it?", [(56, 56)]),
        _prompt(processor, "A much longer question about two images, with many more words so that the "
                           "padding on the left is long and matters for every position id", [(200, 120), (84, 112)]),
        _prompt(processor, "text only, no image at all", []),
        _prompt(processor, "three images", [(60, 60), (150, 70), (56, 200)]),
    ]
    return processor, model, prompts


def _rollout_logprobs(responses, width):
    out = torch.zeros(len(responses), width)
    for i, r in enumerate(responses):
        out[i, :len(r.logprobs)] = r.logprobs
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_training_forward(setup, temperature):
    processor, model, prompts = setup
    torch.manual_seed(0)
    cfg = RolloutConfig(group_size=2, max_new_tokens=10, temperature=temperature, micro_batch_size=8)
    responses = generate(model, prompts, cfg, stop_token_ids(processor, model), processor.tokenizer.pad_token_id)
    assert len(responses) == 8 and [r.prompt_index for r in responses] == [0, 0, 1, 1, 2, 2, 3, 3]
    # Training batch built differently from the generation batch: another order, right padding.
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    batch = collate_sequences([prompts[responses[i].prompt_index] for i in order],
                              [responses[i].token_ids for i in order], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = response_logprobs(model, batch, temperature=temperature, chunk_size=3)
    mask = batch["response_mask"]
    expected = _rollout_logprobs([responses[i] for i in order], mask.shape[1])
    diff = ((logprobs - expected).abs() * mask).max().item()
    assert diff < 1e-4, diff
    assert mask.sum() == sum(len(r.token_ids) for r in responses)


def test_same_sample_alone_or_padded_in_a_batch(setup):
    processor, model, prompts = setup
    pad = processor.tokenizer.pad_token_id
    responses = [torch.tensor([40, 41, 42, 43, 44, 45, 46, 47][: 3 + i]) for i in range(len(prompts))]
    with torch.no_grad():
        together, _ = response_logprobs(model, collate_sequences(prompts, responses, pad))
        for i, (p, r) in enumerate(zip(prompts, responses)):
            alone, _ = response_logprobs(model, collate_sequences([p], [r], pad))
            assert torch.allclose(alone[0, :len(r)], together[i, :len(r)], atol=1e-5), i


def test_chunked_logprobs_equal_full_logits_and_entropy(setup):
    processor, model, prompts = setup
    responses = [torch.randint(10, 300, (n,)) for n in (5, 9, 2, 7)]
    batch = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        chunked, entropy = response_logprobs(model, batch, chunk_size=2, with_entropy=True)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       mm_token_type_ids=batch["mm_token_type_ids"], pixel_values=batch["pixel_values"],
                       image_grid_thw=batch["image_grid_thw"]).logits.float()
    # The policy's distribution leaves out the tokens rollouts never sample (vision placeholders).
    logits[..., never_sample_ids(model)] = float("-inf")
    full = torch.log_softmax(logits, -1)
    idx = batch["logit_positions"]
    naive = full.gather(1, idx.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    naive_entropy = -torch.where(naive.isfinite(), naive.exp() * naive, 0.0).sum(-1)
    naive = naive.gather(-1, batch["response_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["response_mask"].bool()
    assert torch.allclose(chunked[mask], naive[mask], atol=1e-5)
    assert torch.allclose(entropy[mask], naive_entropy[mask], atol=1e-4)


class _EngineLike(torch.nn.Module):
    """Like a DeepSpeed engine around the model: attributes forwarded, but a `config` of its own."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.config = {"train_batch_size": 2}  # DeepSpeed's config, not the model's

    @property
    def model(self):
        return self.module.model

    def get_output_embeddings(self):
        return self.module.get_output_embeddings()


def test_wrapped_reference_leaves_out_the_same_tokens(setup):
    """The ZeRO-3 reference is a DeepSpeed engine: its log-probs must be of the policy's distribution."""
    processor, model, prompts = setup
    responses = [torch.tensor([40, 41, 42, 43][: 2 + i % 3]) for i in range(len(prompts))]
    batch = collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)
    with torch.no_grad():
        direct, _ = response_logprobs(model, batch)
        wrapped, _ = response_logprobs(_EngineLike(model), batch)
    mask = batch["response_mask"].bool()
    assert torch.equal(direct[mask], wrapped[mask])  # KL to an unchanged reference is exactly 0
