"""Tool-use trajectories from a teacher, kept when the final answer verifies: SFT JSONL for the cold start.

    python -m rlvr.agent.teacher --data runs/tools-demo-assets/data/sft_tasks.jsonl \\
        --out runs/tools-demo-assets/sft/sft.jsonl --teacher scripted --config recipes/tools/rl.yaml
    python -m rlvr.agent.teacher --data tasks.jsonl --out sft.jsonl --teacher openai \\
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-VL-72B-Instruct --config my_recipe.yaml

The teacher gets the prompt RL gives the policy (the run's system prompt with the tools section
of ``rlvr.agent.calls.tools_system_prompt``, then the row's images and question through
``data.prompt_template``) and replies. A reply holding ``<tool_call>...</tool_call>`` is cut
after the first ``</tool_call>`` (where an RL rollout stops), the call runs in the registry
(``rlvr.agent.tools.ToolRegistry``: bad arguments and failures come back as an error
observation, which the teacher reads like any other), and the teacher is asked again, up to
``--max-turns`` replies. A reply without a call is the answer; it is scored by the run's
verifier (``rlvr.rewards.verifier_from_config(cfg.reward)``: the training reward's
``answer_extraction`` and equality, as ``rlvr.synth.verify`` scores solvers).

The observation reaches the teacher as a **user** message
``[text "<tool_response>\\n" + text, image, ..., text "\\n</tool_response>"]``: OpenAI's API has
no images in ``tool`` messages, and this is exactly how Qwen's chat templates render a ``tool``
message (``rlvr.agent.calls.observation_text``), so the teacher's context is the one the policy
sees in RL. Clients (``rlvr.synth.client``): ``openai`` (any OpenAI-compatible endpoint; images
as PNG data URLs), ``engine`` (rlvr's rollout engine on a local model; it does not stop at
``</tool_call>``, the reply is cut there), ``scripted`` (``rlvr.devtools.zoom_teacher.ZoomSolver``, the
tools demo's teacher).

Kept trajectories are written as the input row (its image paths made relative to the output
file) plus ``messages``: the turns after the prompt, ``assistant`` (a call turn ends with
``</tool_call>``), ``tool`` (``[{"type": "text", ...}, {"type": "image", "image": "rel.png"}]``,
the observation's images saved as PNG under ``<out stem>_images/``), ..., the final
``assistant`` answer. Dropped: no_answer, wrong_answer, tool_error (a call failed, unless
``--keep-tool-errors``), max_turns (still calling at the last turn), max_calls / max_images (a
call or observation past ``tools.max_calls`` / ``tools.max_images``: an RL rollout would have
ended there, and the SFT loader refuses it), lost_sample (the client
produced nothing), verify_error (the verifier timed out or failed). A report (counts, calls per
trajectory, time) is printed and written to ``<out stem>.report.json``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field


from rlvr.agent.calls import CALL_CLOSE, RESPONSE_CLOSE, RESPONSE_OPEN, parse_tool_call
from rlvr.agent.tools import Observation, ToolRegistry
from rlvr.synth.chat import ChatRequest, VLMClient

log = logging.getLogger(__name__)

DROP_REASONS = ("no_answer", "wrong_answer", "tool_error", "max_turns", "max_calls", "max_images", "lost_sample",
                "verify_error")


@dataclass
class Trajectory:
    """One row's conversation with the teacher. ``messages``: the SFT turns after the prompt
    (tool turns hold the observation's PIL images until written); ``end``: None while running,
    then "kept" or a drop reason."""

    index: int
    row: dict
    example: object  # rlvr.data.Example: the checked row (absolute image paths, parsed gold)
    prompt: list[dict]  # the chat messages of the prompt, ChatRequest form
    history: list[dict] = field(default_factory=list)  # what the teacher was sent after the prompt
    messages: list[dict] = field(default_factory=list)
    images: list = field(default_factory=list)  # the conversation's images: the prompt's, then each observation's
    calls: int = 0
    tool_errors: int = 0
    end: str | None = None
    answer: str | None = None


@dataclass
class TeacherReport:
    rows: int = 0
    kept: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    skipped_rows: collections.Counter = field(default_factory=collections.Counter)  # rows that failed the data check
    calls: collections.Counter = field(default_factory=collections.Counter)  # calls per trajectory -> trajectories
    kept_calls: collections.Counter = field(default_factory=collections.Counter)
    requests: int = 0
    seconds: float = 0.0
    client_failures: dict = field(default_factory=dict)
    tool_stats: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("dropped", "skipped_rows", "calls", "kept_calls"):
            d[key] = {str(k): v for k, v in sorted(getattr(self, key).items())}
        solved = self.rows - sum(self.skipped_rows.values())
        d["kept_share"] = self.kept / solved if solved else 0.0
        d["mean_calls"] = sum(k * v for k, v in self.calls.items()) / max(1, sum(self.calls.values()))
        d["trajectories_per_s"] = solved / self.seconds if self.seconds else 0.0
        return d

    def summary(self) -> str:
        d = self.as_dict()
        return (f"teacher: {self.kept} kept of {self.rows - sum(self.skipped_rows.values())} "
                f"({d['kept_share']:.1%}); dropped {d['dropped'] or 'none'}; skipped rows {d['skipped_rows'] or 'none'}; "
                f"calls per trajectory {d['calls']} (mean {d['mean_calls']:.2f}); {self.requests} requests in "
                f"{self.seconds:.1f} s ({d['trajectories_per_s']:.1f} trajectories/s); "
                f"client failures {self.client_failures or 'none'}")


def observation_message(observation: Observation) -> dict:
    """The observation as the user turn Qwen's templates make of a ``tool`` message."""
    return {"role": "user", "content": [{"type": "text", "text": f"{RESPONSE_OPEN}\n{observation.text}"},
                                        *({"type": "image", "image": im} for im in observation.images),
                                        {"type": "text", "text": f"\n{RESPONSE_CLOSE}"}]}


def cut_at_call(text: str) -> str:
    """``text`` up to and including its first ``</tool_call>`` (where a rollout stops), else all of it."""
    end = text.find(CALL_CLOSE)
    return text if end < 0 else text[:end + len(CALL_CLOSE)]


class Teacher:
    """Runs trajectories turn by turn, one ``client.complete`` call per turn for the whole batch."""

    def __init__(self, client: VLMClient, registry: ToolRegistry, data_cfg, verifier, *, max_turns: int = 4,
                 max_calls: int | None = None, max_images: int | None = None, max_tokens: int = 512,
                 temperature: float = 0.0, seed: int = 0, call_timeout_s: float = 10.0, keep_tool_errors: bool = False):
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns} must be >= 1 (the answer is a turn)")
        self.client, self.registry, self.data_cfg, self.verifier = client, registry, data_cfg, verifier
        self.max_turns, self.max_tokens, self.temperature, self.seed = max_turns, max_tokens, temperature, seed
        self.max_calls, self.max_images = max_calls, max_images  # None: no limit
        self.call_timeout_s, self.keep_tool_errors = call_timeout_s, keep_tool_errors
        self.requests = 0

    def prompt_messages(self, example) -> list[dict]:
        """The RL prompt (``rlvr.data.build_messages``) with the image parts filled in."""
        from rlvr.data import build_messages, open_image

        refs = iter([ref if isinstance(ref, str) else open_image(ref) for ref in example.images])  # paths stay paths
        messages = build_messages(example.question, len(example.images), self.data_cfg)
        for message in messages:
            if isinstance(message["content"], list):
                message["content"] = [{"type": "image", "image": next(refs)} if part["type"] == "image" else part
                                      for part in message["content"]]
        return messages

    def start(self, index: int, row: dict, example) -> Trajectory:
        from rlvr.data import open_image

        return Trajectory(index=index, row=row, example=example, prompt=self.prompt_messages(example),
                          images=[open_image(ref) for ref in example.images])

    def run(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """Every trajectory to its end, then the answers verified; sets ``end`` on each."""
        for turn in range(1, self.max_turns + 1):
            active = [t for t in trajectories if t.end is None and t.answer is None]
            if not active:
                break
            requests = [ChatRequest(messages=t.prompt + t.history, temperature=self.temperature,
                                    max_tokens=self.max_tokens, seed=self.seed + t.index if self.temperature else None)
                        for t in active]
            self.requests += len(requests)
            for t, replies in zip(active, self.client.complete(requests)):
                self._step(t, replies[0] if replies else None, turn)
        self._verify(trajectories)
        return trajectories

    def _step(self, t: Trajectory, reply: str | None, turn: int) -> None:
        if reply is None:
            t.end = "lost_sample"
            return
        text = cut_at_call(reply)
        call = parse_tool_call(text, self.registry.names())
        t.messages.append({"role": "assistant", "content": text})
        t.history.append({"role": "assistant", "content": text})
        if call is None:
            t.answer = text
            return
        if turn == self.max_turns:  # no turn left to read the observation in
            t.end = "max_turns"
            return
        if self.max_calls is not None and t.calls >= self.max_calls:
            t.end = "max_calls"
            return
        observation = self.registry.run(call, t.images, time_limit_s=self.call_timeout_s)
        t.calls += 1
        if self.max_images is not None and len(t.images) - len(t.example.images) + len(observation.images) > self.max_images:
            t.end = "max_images"
            return
        t.tool_errors += observation.error is not None
        t.images.extend(observation.images)
        t.messages.append({"role": "tool", "content": [{"type": "text", "text": observation.text},
                                                        *({"type": "image", "image": im} for im in observation.images)]})
        t.history.append(observation_message(observation))

    def _verify(self, trajectories: list[Trajectory]) -> None:
        answered = [t for t in trajectories if t.end is None and t.answer is not None]
        results = self.verifier.verify_batch([t.answer for t in answered], [t.example.gold for t in answered])
        for t, result in zip(answered, results):
            outcome = result.outcome
            if outcome == "correct":
                t.end = "tool_error" if t.tool_errors and not self.keep_tool_errors else "kept"
            else:
                t.end = {"wrong": "wrong_answer", "no_answer": "no_answer"}.get(outcome, "verify_error")
        for t in trajectories:
            if t.end is None:  # unreachable: every turn either answers, calls or ends
                t.end = "max_turns"


# --- writing ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def sft_row(t: Trajectory, out_dir: str, images_dir: str, data_cfg) -> dict:
    """The input row with its image paths relative to ``out_dir``, plus ``messages`` (observation
    images written as PNG files under ``images_dir``)."""
    row = dict(t.row)
    key = data_cfg.images_key if data_cfg.images_key in row else data_cfg.image_key
    if key in row:
        relative = [os.path.relpath(ref, out_dir) if isinstance(ref, str) else ref for ref in t.example.images]
        row[key] = relative if isinstance(row[key], (list, tuple)) else relative[0]
    stem = f"{t.index:06d}_{_UNSAFE.sub('_', str(t.example.id))[:60]}"
    messages, turn = [], 0
    for message in t.messages:
        if message["role"] != "tool":
            messages.append(dict(message))
            continue
        turn += 1
        parts = []
        for part in message["content"]:
            if part["type"] == "image":
                path = os.path.join(images_dir, f"{stem}_t{turn}_{sum(p['type'] == 'image' for p in parts)}.png")
                part["image"].save(path)
                part = {"type": "image", "image": os.path.relpath(path, out_dir)}
            parts.append(part)
        messages.append({"role": "tool", "content": parts})
    row["messages"] = messages
    return row


# --- the command line ------------------------------------------------------------------------------

def load_tasks(path: str, data_cfg) -> tuple[list[tuple[dict, object]], collections.Counter]:
    """(row, Example) pairs that pass training's row check, and the skipped rows by reason (logged)."""
    from rlvr.data import DataError, RowError, check_row, read_rows

    tasks, skipped = [], collections.Counter()
    base = os.path.dirname(os.path.abspath(path))
    try:
        for loc, row in read_rows(path, "jsonl"):
            try:
                tasks.append((row, check_row(loc, row, data_cfg, None, base)))
            except RowError as e:
                skipped[e.reason] += 1
                log.warning("teacher: skipped %s", e)
    except DataError as e:
        raise SystemExit(f"teacher: {e}") from None
    return tasks, skipped


def build_setup(cfg) -> tuple[ToolRegistry, object]:
    """The run's tools (``rlvr.agent.rollout.build_registry``) and the data config whose system
    prompt lists them (``with_tools_prompt``): the RL prompt. No tools in the config: every
    in-process image tool."""
    from rlvr.agent.rollout import build_registry, with_tools_prompt
    from rlvr.config.tools import BUILTIN_TOOLS

    if not cfg.tools.enabled:
        log.info("teacher: the config names no tools (tools.names); offering all of %s", list(BUILTIN_TOOLS))
        cfg = dataclasses.replace(cfg, tools=dataclasses.replace(cfg.tools, names=list(BUILTIN_TOOLS)))
    return build_registry(cfg.tools), with_tools_prompt(cfg).data


def make_teacher_client(args, tasks, teacher_for_keys: Teacher, cfg) -> VLMClient:
    from rlvr.synth.client import EngineClient, OpenAIClient

    if args.teacher == "openai":
        if not args.base_url or not args.model:
            raise SystemExit("teacher: --teacher openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --model")
        return OpenAIClient(args.base_url, args.model, api_key_env=args.api_key_env, concurrency=args.concurrency,
                            cache_dir=args.cache_dir, timeout_s=args.timeout_s)
    if args.teacher == "engine":
        if not args.model:
            raise SystemExit("teacher: --teacher engine needs --model (a local model folder)")
        # the engine's processor resizes images as the run's does
        pixels = [f"data.min_pixels={cfg.data.min_pixels}", f"data.max_pixels={cfg.data.max_pixels}"]
        return EngineClient(args.model, engine=args.engine, seed=args.seed, overrides=pixels + list(args.overrides))
    from rlvr.devtools.zoom_teacher import scripted_client

    return scripted_client(tasks, teacher_for_keys, cfg)


def main(argv: list[str] | None = None) -> TeacherReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="JSONL of questions (question, answer, images, ...)")
    parser.add_argument("--out", required=True, help="the SFT JSONL to write (observation images next to it)")
    parser.add_argument("--teacher", required=True, choices=("scripted", "openai", "engine"))
    parser.add_argument("--config", help="the run's recipe: prompt template, system prompt, tools, answer_extraction")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (also passed to the engine)")
    parser.add_argument("--max-turns", type=int, help="teacher replies per trajectory (default: tools.max_turns)")
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens per reply")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="solve only the first N rows")
    parser.add_argument("--batch-size", type=int, default=64, help="trajectories run together (one request per turn each)")
    parser.add_argument("--keep-tool-errors", action="store_true", help="keep verified trajectories with a failed call")
    parser.add_argument("--base-url", help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="openai: the served model name; engine: the local model folder")
    parser.add_argument("--api-key-env", help="openai: the environment variable holding the API key")
    parser.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="openai: per request")
    parser.add_argument("--cache-dir", help="openai: cache replies here (greedy or seeded requests)")
    parser.add_argument("--engine", default="hf", choices=("hf", "vllm"), help="engine: the rollout engine")
    args = parser.parse_args(argv)
    from rlvr.config import ConfigError, load_config
    from rlvr.rewards import verifier_from_config

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError, ValueError) as e:
        raise SystemExit(f"teacher: {e}") from None
    if args.batch_size < 1 or (args.limit is not None and args.limit < 0):
        raise SystemExit("teacher: --batch-size must be >= 1 and --limit >= 0")
    try:
        registry, data_cfg = build_setup(cfg)
    except (ValueError, OSError) as e:  # e.g. a tool service that cannot be reached or configured
        raise SystemExit(f"teacher: {e}") from None
    tasks, skipped = load_tasks(args.data, data_cfg)
    tasks = tasks[:args.limit] if args.limit is not None else tasks
    report = TeacherReport(rows=len(tasks) + sum(skipped.values()), skipped_rows=skipped)
    out = os.path.abspath(args.out)
    out_dir = os.path.dirname(out)
    images_dir = os.path.join(out_dir, os.path.splitext(os.path.basename(out))[0] + "_images")
    os.makedirs(images_dir, exist_ok=True)
    started = time.perf_counter()
    with verifier_from_config(cfg.reward) as verifier:
        teacher = Teacher(None, registry, data_cfg, verifier, max_turns=args.max_turns or cfg.tools.max_turns,
                          max_calls=cfg.tools.max_calls, max_images=cfg.tools.max_images,
                          max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                          call_timeout_s=cfg.tools.call_timeout_s, keep_tool_errors=args.keep_tool_errors)
        try:
            teacher.client = make_teacher_client(args, tasks, teacher, cfg)
        except ValueError as e:
            raise SystemExit(f"teacher: {e}") from None
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            for first in range(0, len(tasks), args.batch_size):
                batch = [teacher.start(first + i, row, ex) for i, (row, ex) in enumerate(tasks[first:first + args.batch_size])]
                for t in teacher.run(batch):
                    report.calls[t.calls] += 1
                    if t.end == "kept":
                        report.kept += 1
                        report.kept_calls[t.calls] += 1
                        f.write(json.dumps(sft_row(t, out_dir, images_dir, data_cfg), ensure_ascii=False) + "\n")
                    else:
                        report.dropped[t.end] += 1
                log.info("teacher: %d of %d rows done", min(first + args.batch_size, len(tasks)), len(tasks))
        os.replace(out + ".tmp", out)
    report.seconds, report.requests = time.perf_counter() - started, teacher.requests
    report.client_failures = dict(teacher.client.failures)
    report.tool_stats = registry.metrics()
    with open(os.path.splitext(out)[0] + ".report.json", "w", encoding="utf-8") as f:
        json.dump(report.as_dict(), f, indent=1)
    print(report.summary(), file=sys.stdout)
    print(f"wrote {report.kept} trajectories to {args.out}")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
