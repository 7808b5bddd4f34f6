"""The supervised cold start (``algorithm.loss=sft``): the RL trainer's loop and update on given trajectories.

Data: trajectory JSONL in ``data.train_files``, a normal training row (question, answer, images
relative to the file, id, ...) plus ``messages``, the turns after the prompt, in order::

    {"role": "assistant", "content": "... <tool_call>{...}</tool_call>"}       a call turn
    {"role": "tool", "content": [{"type": "text", "text": "..."},
                                 {"type": "image", "image": "rel/path.png"}]}   its observation
    ...
    {"role": "assistant", "content": "... the answer"}                           the last message

Each row becomes the token layout a multi-turn rollout (``rlvr.agent.rollout``) samples, so SFT
trains on exactly what RL will sample and read::

    prompt | call 1 | observation 1 | call 2 | observation 2 | ... | answer <|im_end|>

The prompt is ``encode_prompt`` with the run's data config (with tools on, the tools system
prompt); each assistant turn is tokenised on its own (a call turn ends at its ``</tool_call>``,
where the engine stops; the answer gets ``<|im_end|>``, the stop token the model must learn to
write); each tool message is ``observation_turn`` (the end of the call turn, the tool response
with its images, the next assistant turn's opening). The loss mask is 1 on the assistant turns
and 0 on everything else: system, user and observation tokens are never trained on.

Bad trajectories (no messages, roles out of order, a call turn not ending with ``</tool_call>``,
no final answer, a missing image, over the rollout's budgets) are checked once at start, counted
by reason and logged like ``rlvr.data``'s skipped rows; training draws from the rest.

Departures from RL (``SFTTrainer.step``): one sequence per row (``rollout.group_size=1``), all
advantages 1 (the ``sft`` loss is then the token-mean NLL, ``rlvr.losses.sft_term``), log-probs
at temperature 1 and no rollout correction (``rlvr.update``). Evaluation, checkpoints, resume
and ``final/`` are the trainer's; RL starts from ``final/`` with ``model.name_or_path``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from rlvr.agent.calls import CALL_CLOSE, END_OF_TURN, generation_prefix, observation_turn, parse_tool_call
from rlvr.agent.tools import Observation, ToolCall
from rlvr.batch import PromptInputs, Response, Turn, encode_prompt
from rlvr.config import Config, DataConfig
from rlvr.data import DataError, EpochSampler, Example, RowError, SkipReport, open_image, read_rows
from rlvr.difficulty import DifficultyFilter
from rlvr.distributed import average_over_ranks
from rlvr.trainer import Trainer

logger = logging.getLogger(__name__)

# Text a model turn must not hold: the processor would expand it into image slots with no image.
VISION_MARKERS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


@dataclass
class TrajectoryBudget:
    """What a rollout could have sampled; None = no limit. ``from_config`` reads the run's."""

    turn_tokens: int | None = None  # tokens of one assistant turn (rollout.max_new_tokens)
    total_tokens: int | None = None  # tokens after the prompt, observations included (tools.max_total_tokens)
    calls: int | None = None  # tool calls (tools.max_calls)
    turns: int | None = None  # assistant turns, the answer's included (tools.max_turns)
    images: int | None = None  # observation images (tools.max_images)

    @classmethod
    def from_config(cls, cfg: Config) -> TrajectoryBudget:
        tools, turn = cfg.tools, cfg.rollout.max_new_tokens
        if not tools.enabled:
            return cls(turn_tokens=turn)
        # as rlvr.agent.rollout.ToolRollout budgets a trajectory
        return cls(turn_tokens=turn, total_tokens=tools.trajectory_tokens(turn),
                   calls=tools.max_calls, turns=tools.max_turns, images=tools.max_images)


def _text(content, where: str, k: int) -> tuple[str, list]:
    """A message's text and image references: a string, or a list of ``{"type": "text"|"image"}`` parts."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RowError("bad_message", f"{where}: message {k}'s content is a {type(content).__name__}; write a string "
                                      'or a list of {"type": "text", "text": ...} / {"type": "image", "image": ...}')
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image" and isinstance(part.get("image"), str):
            images.append(part["image"])
        else:
            raise RowError("bad_message", f"{where}: message {k} has a content part {str(part)[:80]!r}; parts are "
                                          '{"type": "text", "text": "..."} or {"type": "image", "image": "path"}')
    return "\n".join(texts), images


def _messages(example: Example, where: str) -> list[dict]:
    """The row's ``messages``, checked: assistant and tool turns alternating, the last an assistant's."""
    messages = example.columns.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RowError("no_messages", f"{where}: no 'messages' list (the turns after the prompt, ending with the "
                                      "assistant's answer); is this a trajectory file?")
    for k, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        want = "assistant" if k % 2 == 0 else "tool"
        if role != want:
            raise RowError("bad_roles", f"{where}: message {k} has role {role!r} where {want!r} belongs: the turns "
                                        "after the prompt alternate assistant, tool, ..., and end with the assistant")
    if len(messages) % 2 == 0:
        raise RowError("no_answer", f"{where}: the last message is a tool's; a trajectory ends with the assistant's "
                                    "answer")
    return messages


def _observation(text: str, refs: list, base_dir: str | None, where: str, k: int) -> Observation:
    images = []
    for ref in refs:
        path = ref if os.path.isabs(ref) or base_dir is None else os.path.join(base_dir, ref)
        if not os.path.isfile(path):
            raise RowError("missing_image", f"{where}: message {k}'s image file not found: {path}")
        try:
            images.append(open_image(path))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise RowError("corrupt_image", f"{where}: message {k}: cannot read image {path}: {e}") from None
    return Observation(text=text, images=images)


def _assistant_ids(text: str, final: bool, processor, where: str, k: int, budget: TrajectoryBudget) -> list[int]:
    """One assistant turn's token ids, as the engine would have sampled them."""
    if any(marker in text for marker in VISION_MARKERS):
        raise RowError("bad_text", f"{where}: message {k} holds a vision token ({', '.join(VISION_MARKERS)}); "
                                   "the model's turns are text")
    if final:
        if CALL_CLOSE in text:
            raise RowError("no_answer", f"{where}: the last message calls a tool ({CALL_CLOSE}) that no tool message "
                                        "answers; a trajectory ends with the assistant's answer")
        text = text.rstrip() + END_OF_TURN  # the stop token, trained on: the model learns to end its answer
    else:
        text = text.rstrip()  # the engine stops at </tool_call>: nothing after it was sampled
        if not text.endswith(CALL_CLOSE) or text.count(CALL_CLOSE) > 1:
            raise RowError("bad_call", f"{where}: message {k} is followed by a tool message, so it must be one call "
                                       f"ending with {CALL_CLOSE} (the engine stops there); it ends {text[-40:]!r}")
    if not text.strip() or text == END_OF_TURN:
        raise RowError("empty_turn", f"{where}: message {k} is empty")
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    if budget.turn_tokens is not None and len(ids) > budget.turn_tokens:
        raise RowError("too_long", f"{where}: message {k} is {len(ids)} tokens, over rollout.max_new_tokens="
                                   f"{budget.turn_tokens} (one turn's budget); raise it or drop the row")
    return ids


def trajectory_sample(example: Example, processor, data_cfg: DataConfig, assistant_prefix: str | None = None,
                      base_dir: str | None = None,
                      budget: TrajectoryBudget | None = None) -> tuple[PromptInputs, Response]:
    """The training sample of one trajectory row (module docstring): its prompt and the whole
    trajectory as a ``Response`` (loss mask 1 on the assistant's tokens, observations' images).

    ``base_dir``: the folder tool images are relative to (the JSONL file's, ``example_dirs``);
    ``assistant_prefix``: ``generation_prefix(processor)`` when None. Raises ``RowError`` (its
    ``reason`` is what ``check_trajectories`` counts) for a trajectory that cannot be trained on.
    """
    budget = budget or TrajectoryBudget()
    where = f"trajectory {example.id}"
    messages = _messages(example, where)
    prefix = generation_prefix(processor) if assistant_prefix is None else assistant_prefix
    ids: list[torch.Tensor] = []  # per segment
    masks: list[torch.Tensor] = []
    mm: list[torch.Tensor] = []
    turns: list[Turn] = []
    pixels, grids, images = [], [], []
    start, last_call = 0, ""
    for k, message in enumerate(messages):
        text, refs = _text(message.get("content"), where, k)
        if message["role"] == "assistant":
            if refs:
                raise RowError("bad_message", f"{where}: assistant message {k} holds an image; the model writes text")
            seg = torch.tensor(_assistant_ids(text, k == len(messages) - 1, processor, where, k, budget),
                               dtype=torch.long)  # [n]
            ids.append(seg)
            masks.append(torch.ones(len(seg)))
            mm.append(torch.zeros(len(seg), dtype=torch.long))
            turns.append(Turn("model", start, start + len(seg)))
            last_call = text
        else:
            obs = observation_turn(_observation(text, refs, base_dir, where, k), processor, prefix)
            seg = obs.inputs.input_ids.to(torch.long)  # [A]
            ids.append(seg)
            masks.append(obs.loss_mask)
            mm.append(obs.inputs.mm_token_type_ids.to(torch.long))
            call = parse_tool_call(last_call)
            turns.append(Turn("observation", start, start + len(seg), tool=call.name if isinstance(call, ToolCall)
                              else None, status="ok" if isinstance(call, ToolCall) else "invalid", text=text,
                              images=len(refs)))
            if obs.inputs.image_grid_thw is not None:
                pixels.append(obs.inputs.pixel_values)
                grids.append(obs.inputs.image_grid_thw)
                images += obs.inputs.images
        start += len(seg)
    _check_budget(budget, start, len(messages) // 2, len(images), where)
    token_ids = torch.cat(ids)  # [R]
    response = Response(prompt_index=0, token_ids=token_ids, logprobs=torch.zeros(len(token_ids)), finished=True,
                        loss_mask=torch.cat(masks).float(), mm_token_type_ids=torch.cat(mm),
                        pixel_values=torch.cat(pixels) if pixels else None,
                        image_grid_thw=torch.cat(grids) if grids else None, images=images or None, turns=turns,
                        end_reason="answer")
    return encode_prompt(example, processor, data_cfg), response


def _check_budget(budget: TrajectoryBudget, tokens: int, calls: int, images: int, where: str) -> None:
    over = [(tokens, budget.total_tokens, "tokens after the prompt", "tools.max_total_tokens"),
            (calls, budget.calls, "tool calls", "tools.max_calls"),
            (calls + 1, budget.turns, "assistant turns", "tools.max_turns"),
            (images, budget.images, "observation images", "tools.max_images")]
    for value, limit, what, key in over:
        if limit is not None and value > limit:
            raise RowError("too_long", f"{where}: {value} {what}, over {key}={limit}: a rollout could not have "
                                       "sampled it; raise the budget or drop the row")


def check_trajectories(examples: list[Example], processor, data_cfg: DataConfig, dirs: list[str | None],
                       budget: TrajectoryBudget, assistant_prefix: str | None = None,
                       strict: bool = False) -> tuple[list[int], SkipReport]:
    """Build every row's sample once: the indices of the usable rows, and the skipped ones counted by
    reason (``rlvr.data.SkipReport``). With ``strict`` (``data.strict``) the first bad row raises."""
    report, kept = SkipReport(total_rows=len(examples)), []
    for i, example in enumerate(examples):
        try:
            trajectory_sample(example, processor, data_cfg, assistant_prefix, dirs[i], budget)
        except RowError as e:
            if strict:
                raise DataError(f"{e} (data.strict=true; set it to false to skip bad trajectories)") from None
            report.add(e.reason, str(e))
            continue
        kept.append(i)
    return kept, report


def example_dirs(examples: list[Example], paths: list[str], data_cfg: DataConfig) -> list[str]:
    """The folder of the file each example came from: its tool images are relative to it.

    ``load_examples`` keeps rows in file order and skips some; with several files each row is
    matched to its example by id (a duplicate id was given a ``#n`` suffix there).
    """
    base = [os.path.dirname(os.path.abspath(p)) if os.path.isfile(p) else os.path.abspath(p) for p in paths]
    if len(paths) == 1:
        return base * len(examples)
    dirs, k = [], 0
    for path, folder in zip(paths, base):
        for loc, row in read_rows(path, data_cfg.format):
            if k == len(examples):
                break
            row_id = str(row.get(data_cfg.id_key) if row.get(data_cfg.id_key) is not None else loc)
            if examples[k].id == row_id or examples[k].id.startswith(row_id + "#"):
                dirs.append(folder)
                k += 1
    return dirs + [base[-1]] * (len(examples) - k)


class SFTTrainer(Trainer):
    """``Trainer`` whose step is a supervised update on given trajectories (module docstring);
    loading, evaluation, checkpoints, resume and ``final/`` are the trainer's."""

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        cfg, acc = self.cfg, self.accelerator
        self.assistant_prefix = generation_prefix(self.processor)
        self.budget = TrajectoryBudget.from_config(cfg)
        dirs = example_dirs(self.examples, cfg.data.train_files, cfg.data)
        kept, report = check_trajectories(self.examples, self.processor, cfg.data, dirs, self.budget,
                                          self.assistant_prefix, cfg.data.strict)
        if not kept:
            raise DataError(f"no usable trajectories in {', '.join(cfg.data.train_files)}: {report.summary()}")
        (logger.warning if report.skipped else logger.info)("trajectories: %s", report.summary())
        self.trajectory_skips = report
        self.examples, self.dirs = [self.examples[i] for i in kept], [dirs[i] for i in kept]
        if len(kept) < report.total_rows:  # draw from the usable rows only, from where a resumed run was
            state, retired = self.sampler.state_dict(), self.difficulty.state_dict()
            self.sampler = EpochSampler(len(kept), cfg.trainer.seed, cfg.data.shuffle)
            self.sampler.load_state_dict(state)
            self.difficulty = DifficultyFilter(cfg.trainer, self.sampler, acc.process_index, acc.num_processes)
            self.difficulty.load_state_dict(retired)
        if not cfg.tools.enabled and any(len(e.columns["messages"]) > 1 for e in self.examples):
            logger.warning("the trajectories call tools but no tools are on (tools.names): the prompt has no tools "
                           "section, unlike the RL run that will use them")

    def step(self, step: int) -> tuple[dict[str, float], list[int], list[int]]:
        """One supervised update on ``trainer.prompts_per_step`` rows (this rank: every world-size-th one)."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.perf_counter()
        self.engine.sleep()  # vLLM on GPU: no generation here, free its memory for the update
        rows = self.sampler.take(cfg.trainer.prompts_per_step)  # the same on every rank
        mine = rows[acc.process_index::acc.num_processes]
        prompts, responses = [], []
        for k, i in enumerate(mine):
            prompt, response = trajectory_sample(self.examples[i], self.processor, cfg.data, self.assistant_prefix,
                                                 self.dirs[i], self.budget)
            response.prompt_index = k
            prompts.append(prompt)
            responses.append(response)
        t1 = time.perf_counter()
        metrics = self.update.run(prompts, responses, torch.ones(len(responses)), step)
        self._engine_stale, t2 = True, time.perf_counter()
        lengths = torch.tensor([len(r.token_ids) for r in responses], dtype=torch.float32)
        metrics.update({
            "sft/tokens": float(sum(r.trained_tokens for r in responses)),  # summed over ranks below
            "sft/tool_calls": sum(r.tool_calls for r in responses) / len(responses),
            "response_length/mean": lengths.mean().item(), "response_length/max": lengths.max().item(),
            "time/data_s": t1 - t0, "time/update_s": t2 - t1,
        })
        metrics = average_over_ranks(metrics, acc.device)
        metrics["sft/tokens"] *= acc.num_processes
        metrics.update({"time/step_s": time.perf_counter() - t0, "step": step + 1, "epoch": self.sampler.epoch})
        return metrics, rows, mine
