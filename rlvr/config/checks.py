"""The config rules that span sections: how the rollout batch splits into minibatches, micro-batches and ranks."""

from __future__ import annotations

from rlvr.config.schema import Config, ConfigError


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


def batch_problems(cfg: Config) -> list[str]:
    """How the rollout batch (trainer x rollout) splits into minibatches and micro-batches."""
    t, r = cfg.trainer, cfg.rollout
    batch = t.prompts_per_step * r.group_size  # sequences per rollout batch
    if min(t.prompts_per_step, t.num_minibatches, t.micro_batch_size, r.group_size) < 1:
        return []  # reported by the sections' own checks
    if batch % t.num_minibatches:
        return [f"trainer.num_minibatches={t.num_minibatches} does not divide the rollout batch of "
                f"trainer.prompts_per_step * rollout.group_size = {t.prompts_per_step} * {r.group_size} = {batch} "
                "sequences, so minibatches would be uneven. Use a divisor of "
                f"{batch}, e.g. trainer.num_minibatches in {_divisors_near(batch, t.num_minibatches)}."]
    mini = batch // t.num_minibatches
    if t.micro_batch_tokens is None and mini % t.micro_batch_size:
        return [f"trainer.micro_batch_size={t.micro_batch_size} does not divide each minibatch of "
                f"{batch} / {t.num_minibatches} = {mini} sequences, so gradient accumulation would be uneven. "
                f"Use a divisor of {mini}, e.g. trainer.micro_batch_size in {_divisors_near(mini, t.micro_batch_size)}."]
    return []


def tool_problems(cfg: Config) -> list[str]:
    """A vLLM context too short for a whole tool trajectory (its later turns read every turn before)."""
    t, length = cfg.tools, cfg.rollout.vllm.max_model_len
    if not t.enabled or cfg.rollout.engine != "vllm" or length is None:
        return []
    need = cfg.data.max_prompt_tokens + t.trajectory_tokens(cfg.rollout.max_new_tokens)
    return [] if length >= need else [
        f"rollout.vllm.max_model_len={length} is shorter than a tool trajectory can grow: data.max_prompt_tokens + "
        f"the trajectory budget (tools.max_total_tokens, or tools.max_turns x rollout.max_new_tokens) = {need}; "
        f"vLLM would refuse its later turns. Raise it to {need} or more, or leave it null to derive it."]


def group_problems(cfg: Config) -> list[str]:
    """``rollout.group_size`` for ``algorithm.loss``: RL compares responses to one prompt (2 or more);
    SFT (``rlvr.sft``) trains on one given trajectory per row (1), and has no rewards to filter by."""
    g, ds = cfg.rollout.group_size, cfg.trainer.dynamic_sampling
    if g < 1:
        return []  # reported by the section's own check
    if cfg.algorithm.loss != "sft":
        return [] if g >= 2 else [
            f"rollout.group_size={g}: group-normalised advantages compare each response with the others for the "
            "same prompt, so a group needs at least 2. Set rollout.group_size=2 or more (8 is typical); only "
            "algorithm.loss=sft (the supervised cold start) takes 1."]
    problems = []
    if g != 1:
        problems.append(f"algorithm.loss=sft trains on one given trajectory per row, so rollout.group_size={g} must "
                        "be 1 (trainer.prompts_per_step rows make a step; eval.k still sets how many answers "
                        "evaluation samples).")
    if ds.filter_groups or ds.retire_after_solved:
        problems.append("algorithm.loss=sft samples nothing and has no rewards: set trainer.dynamic_sampling."
                        "filter_groups=false and trainer.dynamic_sampling.retire_after_solved=0.")
    return problems


def check_config(cfg: Config, num_processes: int = 1) -> None:
    """Every rule, run before any model loads; raises one ConfigError listing every problem.

    The sections' own rules (``Config.problems``), then the rules across sections: the batch
    split, the group size for the loss (``group_problems``), and, once the global batch is sound, its split
    over ``num_processes`` ranks.
    """
    problems = cfg.problems() + batch_problems(cfg) + group_problems(cfg) + tool_problems(cfg)
    if not problems:
        problems += process_problems(cfg, num_processes)
    if problems:
        lines = "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))
        raise ConfigError(f"Invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{lines}")
