"""What the model writes: which rollouts to show each step, on a page (``rlvr.sample_pages``) and in wandb.

    SampleLogger(cfg, wandb_run).log(step, examples, responses, texts, rewards, tokenizer=tokenizer)   # in the trainer

A tool-using response (``Response.turns``) is shown turn by turn (``conversation``): the
model's turns decoded from its own token ids, each observation with its tool, status, text
and images.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from rlvr.sample_pages import SampleRow, TurnView, write_sample_page

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- choosing rollouts


def pick_rollouts(rewards: Sequence[float], group_size: int, n: int) -> list[int]:
    """Indices of ``n`` responses to show from a prompt-major batch of groups of ``group_size``.

    Right and wrong answers are mixed whenever the batch has both, wherever in the batch
    they are: half the picks (rounded up) are rewarded responses (reward > 0), half are not,
    as far as each kind exists. Each kind's picks go to different prompts, evenly spread over
    the prompts that have that kind, and the wrong ones avoid prompts already shown, before
    any prompt is shown twice. Returned in batch order. Deterministic.
    """
    total = len(rewards)
    n = min(n, total)
    if n <= 0:
        return []
    rewarded = [i for i in range(total) if rewards[i] > 0]
    unrewarded = [i for i in range(total) if not rewards[i] > 0]  # 0, negative and NaN rewards
    take_rewarded = min(len(rewarded), -(-n // 2))
    take_unrewarded = min(len(unrewarded), n - take_rewarded)
    take_rewarded = min(len(rewarded), n - take_unrewarded)  # too few wrong ones: more right ones
    chosen = _spread(rewarded, group_size, take_rewarded, used=set())
    chosen += _spread(unrewarded, group_size, take_unrewarded, used={i // group_size for i in chosen})
    return sorted(chosen)


def _spread(pool: list[int], group_size: int, n: int, used: set[int]) -> list[int]:
    """``n`` of the ascending indices in ``pool``: first one per prompt not in ``used``, then one per
    prompt in ``used``, then second members, and so on; evenly spaced within a tier that has more
    than is needed."""
    by_prompt: dict[int, list[int]] = {}
    for i in pool:
        by_prompt.setdefault(i // group_size, []).append(i)
    tiers = []
    depth = max((len(m) for m in by_prompt.values()), default=0)
    for d in range(depth):
        tiers.append([m[d] for p, m in by_prompt.items() if len(m) > d and (d > 0 or p not in used)])
        if d == 0:
            tiers.append([m[0] for p, m in by_prompt.items() if p in used])
    chosen: list[int] = []
    for tier in tiers:
        need = n - len(chosen)
        if need <= 0:
            break
        chosen += tier if len(tier) <= need else [tier[(j * len(tier)) // need] for j in range(need)]
    return chosen


def conversation(response, tokenizer=None) -> tuple[list[TurnView], str]:
    """The turns of a tool-using ``rlvr.batch.Response`` as shown on a page, and a note ("" when all is well).

    Model turns are ``tokenizer.decode(token_ids[start:end])`` (special tokens skipped, as the
    trainer decodes completions; ``tokenizer=None``: left undecoded). Each observation takes the
    next ``turn.images`` of ``response.images``, in order; a missing image is None.
    """
    images = list(response.images or [])
    turns, used = [], 0
    for turn in response.turns:
        ids = response.token_ids[turn.start:turn.end]
        if turn.kind == "model":
            text = None if tokenizer is None else tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            turns.append(TurnView("model", text, tokens=len(ids)))
            continue
        own = images[used:used + turn.images]
        turns.append(TurnView(turn.kind, turn.text, tokens=len(ids), tool=turn.tool, status=turn.status,
                              images=own + [None] * (turn.images - len(own))))
        used += turn.images
    note = f"{len(images) - used} observation images belong to no turn" if len(images) > used else ""
    return turns, note


def rollout_rows(examples: Sequence[Any], responses: Sequence[Any], texts: Sequence[str], rewards: Sequence[float],
                 group_size: int, n: int, verifier=None, tokenizer=None) -> list[SampleRow]:
    """``SampleRow``s for ``n`` rollouts of one step.

    ``examples[i]`` is the ``rlvr.data.Example`` response i answers (one per response,
    prompt-major as ``rlvr.rollout.generate`` returns them), ``responses`` the
    ``rlvr.batch.Response``s (or None), ``texts`` the decoded completions, ``rewards`` the
    total rewards. The extracted answer and outcome come from ``verifier`` (the run's; None:
    default settings), run on the chosen few only. A response with ``turns`` is shown turn by
    turn, its model turns decoded with ``tokenizer`` (the run's); ``texts[i]`` is then the last
    model turn's text, the one the reward reads.
    """
    from rlvr.rewards import default_verifier

    verifier = verifier if verifier is not None else default_verifier()
    if not len(examples) == len(texts) == len(rewards) or (responses is not None and len(responses) != len(texts)):
        raise ValueError(f"rollout_rows needs one example, response, text and reward per rollout; got "
                         f"{len(examples)} examples, {len(responses) if responses is not None else '-'} responses, "
                         f"{len(texts)} texts and {len(rewards)} rewards")
    idx = pick_rollouts(rewards, group_size, n)
    if not idx:
        return []
    results = verifier.verify_batch([texts[i] for i in idx], [examples[i].gold for i in idx])
    rows = []
    for i, res in zip(idx, results):
        e = examples[i]
        g = i // group_size
        group = rewards[g * group_size:(g + 1) * group_size]
        rewarded = sum(1 for r in group if r > 0)
        resp = responses[i] if responses is not None else None
        row = SampleRow(
            id=e.id, question=e.question, images=list(e.images), completion=texts[i], extracted=res.extracted,
            gold=e.answer, reward=float(rewards[i]), outcome=res.outcome, source=e.source,
            response_tokens=len(resp.token_ids) if resp is not None else None,
            finished=resp.finished if resp is not None else None,
            note=f"{rewarded}/{len(group)} rewarded in its group",
        )
        if resp is not None and resp.turns is not None:
            row.turns, problem = conversation(resp, tokenizer)
            row.tool_calls, row.end_reason, row.model_tokens = resp.tool_calls, resp.end_reason, resp.trained_tokens
            row.note += f"; {problem}" if problem else ""
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- wandb


TABLE_COLUMNS = ["step", "id", "source", "image", "question", "completion", "extracted", "gold", "reward", "outcome",
                 "response_tokens"]
TOOL_COLUMNS = ["tool_calls", "end_reason", "conversation"]  # added when a row is a tool-using rollout


def conversation_text(row: SampleRow) -> str:
    """A tool-using rollout's turns as plain text (a wandb cell); "" for a single-turn row."""
    parts = []
    for t in row.turns or []:
        if t.kind == "model":
            parts.append("[model]\n" + (t.text if t.text is not None else f"({t.tokens} tokens, not decoded)"))
        else:
            parts.append(f"[{t.tool or 'no tool'}: {t.status}, {len(t.images)} image{'s' * (len(t.images) != 1)}]\n"
                         f"{t.text}")
    return "\n\n".join(parts)


def table_columns(rows: Sequence[SampleRow]) -> list[str]:
    """The wandb table's columns: ``TABLE_COLUMNS``, plus ``TOOL_COLUMNS`` when any row used tools."""
    return TABLE_COLUMNS + (TOOL_COLUMNS if any(r.turns is not None for r in rows) else [])


def log_samples_wandb(run, step: int, rows: Sequence[SampleRow], key: str = "samples/rollouts") -> None:
    """Log ``rows`` to the wandb ``run`` as a table with the (first) image of each row."""
    import wandb

    from rlvr.data import open_image

    columns = table_columns(rows)
    table = wandb.Table(columns=columns)
    for r in rows:
        image = None
        if r.images:
            try:
                image = wandb.Image(open_image(r.images[0]), caption=f"{r.id} (1 of {len(r.images)})")
            except Exception:  # noqa: BLE001 - an unreadable image leaves an empty cell
                image = None
        cells = [step, r.id, r.source, image, r.question, r.completion, r.extracted, r.gold, r.reward, r.outcome,
                 r.response_tokens]
        if len(columns) > len(TABLE_COLUMNS):
            cells += [r.tool_calls, r.end_reason, conversation_text(r)]
        table.add_data(*cells)
    run.log({key: table}, step=step)


# --------------------------------------------------------------------------- trainer hook


class SampleLogger:
    """Every ``log.samples_every`` steps, at step 1 and at the last step (``trainer.max_steps``),
    ``log.samples_per_step`` rollouts to a page and wandb.

    Main process only: the page shows the rollouts this process sampled. Never raises: a
    failure to write samples is logged and training goes on.
    """

    def __init__(self, cfg, wandb_run=None, enabled: bool = True, verifier=None):
        self.run_dir = cfg.output_dir
        self.every = cfg.log.samples_every
        self.per_step = cfg.log.samples_per_step
        self.last_step = cfg.trainer.max_steps
        self.group_size = cfg.rollout.group_size
        self.verifier = verifier  # the run's (None: one with the config's reward settings, made when first needed)
        self.reward_cfg = cfg.reward
        self.wandb_run = wandb_run
        self.enabled = enabled and self.every > 0 and self.per_step > 0

    def due(self, step: int) -> bool:
        """Whether 1-based ``step`` gets a page: step 1 (the start), every ``every``-th, and the last."""
        return self.enabled and (step == 1 or step % self.every == 0 or step == self.last_step)

    def log(self, step: int, examples, responses, texts, rewards, tokenizer=None) -> str | None:
        """Pick and write this step's rollouts if due; returns the page path (or None).

        ``tokenizer`` (the run's) decodes the model turns of tool-using responses."""
        if not self.due(step):
            return None
        try:
            rewards = [float(r) for r in rewards]
            if self.verifier is None:
                from rlvr.rewards import verifier_from_config

                self.verifier = verifier_from_config(self.reward_cfg)
            rows = rollout_rows(examples, responses, texts, rewards, self.group_size, self.per_step, self.verifier,
                                tokenizer)
            path = write_sample_page(self.run_dir, step, rows, batch_rewards=rewards)
            if self.wandb_run is not None:
                log_samples_wandb(self.wandb_run, step, rows)
            return path
        except Exception:  # noqa: BLE001 - samples are for people; never stop training for them
            logger.exception("could not write the samples of step %d", step)
            return None
