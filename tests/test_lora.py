"""LoRA: which layers get adapters, the adapter-off reference, and what is saved."""

import pytest
import torch

from rlvr.config import LoraConfig
from rlvr.lora import apply_lora, inner_model, is_lora, lora_targets, reference_context, save_adapter
from rlvr.models import load_model
from rlvr.batch import collate_sequences, encode_prompt
from rlvr.logprobs import PolicyLogprobs


@pytest.fixture()
def model(qwen25_dir):
    return load_model(qwen25_dir, "float32")


def test_targets_are_language_model_linears_and_skip_the_vision_tower(model):
    names = lora_targets(model, LoraConfig(rank=4))
    assert names and all(".language_model." in n for n in names)
    assert any(n.endswith("self_attn.q_proj") for n in names) and any(n.endswith("mlp.down_proj") for n in names)
    assert "lm_head" not in names
    # The vision MLP has layers with the same names; a loose pattern still leaves the tower out...
    loose = lora_targets(model, LoraConfig(rank=4, target_modules=r".*(gate_proj|qkv)"))
    assert loose and not any(".visual." in n for n in loose)
    # ...unless asked for.
    with_vision = lora_targets(model, LoraConfig(rank=4, target_modules=r".*(gate_proj|qkv)", vision_tower=True))
    assert any(".visual." in n for n in with_vision)


def test_a_pattern_matching_nothing_says_what_names_look_like(model):
    with pytest.raises(ValueError, match="matches no linear layer.*language_model"):
        lora_targets(model, LoraConfig(rank=4, target_modules="q_proj"))  # a full match is needed


def _batch(qwen25_dir, tmp_path):
    from rlvr.config import DataConfig
    from rlvr.data import load_examples
    from rlvr.models import load_processor
    from rlvr.devtools.make_demo_data import main as make_data

    make_data(["--out", str(tmp_path), "--train", "2", "--val", "1"])
    processor = load_processor(qwen25_dir)
    examples, _ = load_examples([str(tmp_path / "train.jsonl")], DataConfig(), processor)
    prompts = [encode_prompt(e, processor, DataConfig()) for e in examples]
    responses = [torch.tensor([40, 41, 42]), torch.tensor([50, 51])]
    return collate_sequences(prompts, responses, processor.tokenizer.pad_token_id)


def test_only_adapters_train_and_adapter_off_is_the_base_model(model, qwen25_dir, tmp_path):
    batch = _batch(qwen25_dir, tmp_path)
    with torch.no_grad():
        base, _ = PolicyLogprobs(model)(batch)  # [B, R]
    policy = apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    assert is_lora(policy) and inner_model(policy) is model
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # move the adapted policy away from the base model
        adapted, _ = PolicyLogprobs(policy)(batch)
        with reference_context(policy):
            reference, _ = PolicyLogprobs(policy)(batch)
    mask = batch["response_mask"].bool()
    assert torch.allclose(reference[mask], base[mask], atol=1e-6)
    assert not torch.allclose(adapted[mask], base[mask], atol=1e-3)


def test_saved_adapter_loads_back_with_peft(model, qwen25_dir, tmp_path):
    from peft import PeftModel

    policy = apply_lora(model, LoraConfig(rank=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    state = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    save_adapter(policy, str(tmp_path / "adapter"), state)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    loaded = PeftModel.from_pretrained(load_model(qwen25_dir, "float32"), str(tmp_path / "adapter"))
    got = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert got and all(torch.allclose(p, torch.full_like(p, 0.01)) for p in got.values())
