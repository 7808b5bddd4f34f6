"""Evaluation: pass@k, maj@k, greedy accuracy, lengths and verifier outcomes on validation data.

During training (the trainer calls it every ``eval.every_steps`` and at the end)::

    evaluator = Evaluator(cfg, processor, val_examples, accelerator=acc, out_dir=f"{cfg.output_dir}/eval")
    metrics.update(evaluator.run(model, step))      # eval/* keys plus time/eval_s

Any saved model, a run's ``final/``, or a checkpoint, from the command line::

    python -m rlvr.evaluate --model DIR --data FILE.jsonl [--k 8] [--config recipes/X.yaml] [key=value ...]

It samples ``eval.k`` responses per prompt with the run's rollout engine
(``rlvr.rollout``: in training the trainer's own; standalone the one ``rollout.engine``
names) and scores them with the numeric verifier (``rlvr.rewards``): accuracy means the
verifier's verdict, not the training reward, which may add shaping terms. Estimators are in ``rlvr.metrics``. Predictions are written one JSON object per
response, with ``completion`` and ``answer``, so ``python -m rlvr.score`` reads them back
(``predictions.jsonl``: the sampled responses, whose accuracy is pass@1;
``predictions_greedy.jsonl``: the greedy ones).

Sampling is seeded by ``eval.seed`` alone, inside a forked RNG: two evaluations of the same
weights give the same numbers, and evaluating does not change the training run's random
stream (a resumed run stays identical to an uninterrupted one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

from rlvr.config import EvalConfig
from rlvr.files import write_jsonl
from rlvr.trained_models import ModelNotFound, ModelSource, load_trained, resolve_model

logger = logging.getLogger(__name__)


def _fork_rng(device):
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    return torch.random.fork_rng(devices=devices)


class Evaluator:
    """Evaluates a policy on fixed validation examples; one instance for the whole run.

    Under several processes every rank must call ``run`` (it gathers results); each
    evaluates a slice of the prompts, padded so all ranks run the same number of generate
    calls. Predictions are written by the main process only.
    """

    def __init__(self, cfg, processor, examples: Sequence[Any], settings: EvalConfig | None = None,
                 accelerator=None, out_dir: str | None = None, verifier=None):
        from rlvr.rewards import verifier_from_config

        self.cfg = cfg
        # the verifier that scores (the trainer's own; else one from the config's reward settings)
        self.verifier = verifier if verifier is not None else verifier_from_config(cfg.reward)
        self.settings = settings or cfg.eval
        s = self.settings
        if s.k < 1:
            raise ValueError(f"eval.k={s.k} must be >= 1 (samples per prompt)")
        self.processor = processor
        self.examples = list(examples)[: s.max_prompts] if s.max_prompts is not None else list(examples)
        self.accelerator = accelerator
        self.out_dir = out_dir
        self.rollout = dataclasses.replace(
            cfg.rollout, group_size=s.k,
            temperature=s.temperature if s.temperature is not None else cfg.rollout.temperature,
            max_new_tokens=s.max_new_tokens if s.max_new_tokens is not None else cfg.rollout.max_new_tokens,
        )
        self.predictions: list[dict] = []  # rows of the latest run, sampled responses
        self.greedy_predictions: list[dict] = []

    # ------------------------------------------------------------------ schedule

    def due(self, step: int, max_steps: int) -> bool:
        """Whether to evaluate after 1-based ``step``: every ``eval.every_steps`` and at the last step."""
        if not self.examples:
            return False
        every = self.settings.every_steps
        return step == max_steps or (every > 0 and step % every == 0)

    # ------------------------------------------------------------------ running

    def _slice(self) -> tuple[list[int], int]:
        """This rank's example indices and how many it must pad to (equal on every rank)."""
        acc = self.accelerator
        rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
        mine = list(range(rank, len(self.examples), world))
        return mine, -(-len(self.examples) // world)

    def _generate(self, engine, indices: list[int], greedy: bool):
        from rlvr import rollout
        from rlvr.batch import encode_prompt

        cfg = self.rollout if not greedy else dataclasses.replace(self.rollout, group_size=1)
        prompts = [encode_prompt(self.examples[i], self.processor, self.cfg.data) for i in indices]
        # Per-prompt sampling streams: the same samples whatever the chunking or the number of ranks.
        seeds = None if greedy else [rollout.mix_seed(self.settings.seed, i) for i in indices]
        responses = engine.generate(prompts, seeds, settings=cfg, greedy=greedy)
        texts = self.processor.tokenizer.batch_decode([r.answer_ids() for r in responses], skip_special_tokens=True)
        return responses, texts

    def _engine(self, model, synced_gpus: bool | None):
        """``model`` as an engine: an engine as it is; a transformers model behind the HF engine; with
        tools (``tools.*``), behind the multi-turn loop (``rlvr.agent.rollout``) unless it already is."""
        from rlvr.agent.rollout import ToolRollout, with_tools
        from rlvr.models import stop_token_ids
        from rlvr.rollout import HFEngine, RolloutEngine

        if isinstance(model, ToolRollout):
            return model
        if not isinstance(model, RolloutEngine):
            policy = self.accelerator.unwrap_model(model) if self.accelerator is not None else model

            @contextlib.contextmanager
            def as_given():
                yield policy, synced_gpus

            model = HFEngine(self.rollout, stop_token_ids(self.processor, policy), self.processor.tokenizer.pad_token_id,
                             as_given)
        return with_tools(model, self.cfg, self.processor, self.accelerator)

    def _evaluate_local(self, engine) -> list[tuple[int, dict, list[dict], dict | None]]:
        """(example index, record fields, sampled prediction rows, greedy row) for this rank's prompts."""
        from rlvr.metrics import vote_key

        mine, padded = self._slice()
        k = self.settings.k
        per_chunk = max(1, self.rollout.micro_batch_size // k)  # prompts per generate call
        indices = mine + [mine[-1] if mine else 0] * (padded - len(mine))  # padding, dropped below
        verifier = self.verifier
        out = []
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start:start + per_chunk]
            real = [i for j, i in enumerate(chunk) if start + j < len(mine)]
            examples = [self.examples[i] for i in chunk]
            responses, texts = self._generate(engine, chunk, False)
            results = verifier.verify_batch(texts, [examples[r.prompt_index].gold for r in responses])
            greedy = None
            if self.settings.greedy:
                g_responses, g_texts = self._generate(engine, chunk, True)
                g_results = verifier.verify_batch(g_texts, [e.gold for e in examples])
                greedy = list(zip(g_responses, g_texts, g_results))
            for p, index in enumerate(real):
                e = self.examples[index]
                rows = []
                for j in range(p * k, (p + 1) * k):
                    rows.append(_prediction(e, j - p * k, responses[j], texts[j], results[j]))
                record = {
                    "id": e.id, "source": e.source, "rewards": [r["reward"] for r in rows],
                    "votes": [vote_key(r["extracted"]) for r in rows],
                    "lengths": [r["response_tokens"] for r in rows], "truncated": [not r["finished"] for r in rows],
                    "outcomes": [r["outcome"] for r in rows],
                }
                g_row = None
                if greedy is not None:
                    g_row = _prediction(e, "greedy", *greedy[p])
                    record["greedy_reward"] = g_row["reward"]
                out.append((index, record, rows, g_row))
        return out

    def run(self, model, step: int | None = None, synced_gpus: bool | None = None) -> dict[str, float]:
        """Evaluate ``model`` and return ``eval/*`` metrics and ``time/eval_s``.

        ``model``: a rollout engine (``rlvr.rollout.RolloutEngine``, the trainer's), or a
        transformers model, generated with by the HF engine (with ``synced_gpus``, from
        ``rlvr.distributed.generation_model``). Writes ``<out_dir>/step_NNNNNN.jsonl`` (and
        ``..._greedy.jsonl``) on the main process when ``out_dir`` was given.
        """
        import torch

        from rlvr.metrics import PromptRecord, summarize

        if not self.examples:
            return {}
        start = time.perf_counter()
        acc = self.accelerator
        engine = self._engine(model, synced_gpus)
        with _fork_rng(acc.device if acc is not None else None), torch.no_grad():
            local = self._evaluate_local(engine)
        if acc is not None and acc.num_processes > 1:
            from rlvr.distributed import gather_objects

            local = [item for part in gather_objects(acc, local) for item in part]  # every rank's prompts
        local = sorted({index: item for index, *item in local}.items())  # one per example, in data order
        records = [PromptRecord(**record) for _, (record, _, _) in local]
        self.predictions = [row for _, (_, rows, _) in local for row in rows]
        self.greedy_predictions = [g for _, (_, _, g) in local if g is not None]
        metrics = summarize(records)
        metrics["eval/samples_per_prompt"] = float(self.settings.k)
        calls = [row["tool_calls"] for row in self.predictions if "tool_calls" in row]
        if calls:  # multi-turn with tools: how often the policy calls one
            metrics["eval/tool_calls_per_sample"] = sum(calls) / len(calls)
            metrics["eval/called_frac"] = sum(c > 0 for c in calls) / len(calls)
        metrics["time/eval_s"] = time.perf_counter() - start
        if self.out_dir and (acc is None or acc.is_main_process):
            name = f"step_{step:06d}" if step is not None else "predictions"
            self.write_predictions(os.path.join(self.out_dir, f"{name}.jsonl"),
                                   os.path.join(self.out_dir, f"{name}_greedy.jsonl"))
        return metrics

    def write_predictions(self, path: str, greedy_path: str | None = None) -> None:
        """The latest run's predictions as JSONL that ``python -m rlvr.score`` reads.

        Each row also carries the verifier settings it was scored with (``answer_extraction``,
        ``rel_tol``), so ``rlvr.score`` re-scores it the same way without being told.
        """
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        scoring = {"answer_extraction": self.cfg.reward.answer_extraction, "rel_tol": self.cfg.reward.rel_tol}
        write_jsonl(path, [{**row, **scoring} for row in self.predictions])
        if greedy_path and self.greedy_predictions:
            write_jsonl(greedy_path, [{**row, **scoring} for row in self.greedy_predictions])


def _prediction(example, sample, response, text: str, result) -> dict:
    return {
        "id": example.id, "source": example.source, "sample": sample, "question": example.question,
        "images": [ref for ref in example.images if isinstance(ref, str)],
        "completion": text, "answer": example.answer, "extracted": result.extracted, "reward": result.reward,
        "outcome": result.outcome, "response_tokens": len(response.token_ids), "finished": response.finished,
        **({"tool_calls": response.tool_calls, "end_reason": response.end_reason} if response.turns else {}),
    }


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rlvr.evaluate",
        description="Evaluate a saved model or checkpoint: pass@k, maj@k, greedy accuracy, lengths and "
                    "verifier outcomes, with predictions that python -m rlvr.score reads.",
        epilog="Config: --config FILE if given, else the run's config.yaml when --model is inside a run "
               "(so the prompt template and answer extraction match training), else the defaults; then "
               "key=value overrides, e.g. rollout.max_new_tokens=512 reward.answer_extraction=last_number.")
    p.add_argument("--model", required=True, help="model folder, hub id, run folder (uses final/) or RUN/checkpoints/step_N")
    p.add_argument("--data", required=True, action="append", help="JSONL (or any data.format) to evaluate on; repeatable")
    p.add_argument("--config", help="recipe YAML to take data/rollout/reward settings from")
    p.add_argument("--k", type=int, default=None, help="samples per prompt (default: eval.k, 8)")
    p.add_argument("--greedy", action=argparse.BooleanOptionalAction, default=None,
                   help="also decode one greedy response per prompt (default: on)")
    p.add_argument("--max-prompts", type=int, default=None, help="evaluate the first N rows only")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--out", help="output folder (default: RUN/eval/<model>_<data> for a run's model, "
                                 "else evals/<model>_<data>)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--samples", type=int, default=12, help="prompts shown on the samples.html page (0 = no page)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def _default_out(source: ModelSource, data: list[str]) -> str:
    stem = "+".join(os.path.splitext(os.path.basename(d.rstrip("/")))[0] for d in data)
    name = f"{source.label}_{stem}"
    if source.run_config:
        return os.path.join(os.path.dirname(source.run_config), "eval", name)
    return os.path.join("evals", name)


def _sample_page(out_dir: str, ev: Evaluator, n: int) -> str | None:
    from rlvr.sample_pages import SampleRow, render_page

    if n <= 0 or not ev.predictions:
        return None
    by_id = {e.id: e for e in ev.examples}
    greedy = {g["id"]: g for g in ev.greedy_predictions}
    rows = []
    for pred in ev.predictions:
        if pred["sample"] != 0:
            continue
        if len(rows) >= n:
            break
        e = by_id[pred["id"]]
        group = [p for p in ev.predictions if p["id"] == pred["id"]]
        note = f"{sum(p['reward'] > 0 for p in group)}/{len(group)} samples correct"
        if pred["id"] in greedy:
            note += f"; greedy {'correct' if greedy[pred['id']]['reward'] > 0 else 'wrong'}"
        rows.append(SampleRow(id=e.id, question=e.question, images=list(e.images), completion=pred["completion"],
                              extracted=pred["extracted"], gold=e.answer, reward=pred["reward"],
                              outcome=pred["outcome"], source=e.source, response_tokens=pred["response_tokens"],
                              finished=pred["finished"], note=note))
    path = os.path.join(out_dir, "samples.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_page(f"evaluation samples: {os.path.basename(out_dir)}",
                            f"first sample of the first {len(rows)} prompts", rows))
    return path


def format_metrics(metrics: dict[str, float]) -> str:
    """The eval metrics as aligned lines, headline numbers first."""
    lines = []
    for key, value in metrics.items():
        if key.startswith("eval/by_source/"):
            continue
        lines.append(f"  {key[5:] if key.startswith('eval/') else key:<28} {value:.4f}")
    sources = sorted({k.split("/")[2] for k in metrics if k.startswith("eval/by_source/")})
    for s in sources:
        p = f"eval/by_source/{s}/"
        k = max(int(key.split("@")[1]) for key in metrics if key.startswith(p + "pass@"))
        lines.append(f"  [{s}] pass@1 {metrics[p + 'pass@1']:.4f}  pass@{k} {metrics[f'{p}pass@{k}']:.4f}  "
                     f"prompts {int(metrics[p + 'num_prompts'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from rlvr.logs import setup_logging
    from rlvr.config import ConfigError, load_config, check_config

    setup_logging()
    try:
        source = resolve_model(args.model)
        config_path = args.config or source.run_config
        from rlvr.agent.rollout import with_tools_prompt
        from rlvr.rollout.vllm_env import prepare_for_run

        cfg = with_tools_prompt(load_config(config_path, args.overrides))  # with tools: they are in the prompt

        prepare_for_run(cfg)  # vLLM's environment before the processor loads
        cfg.model.name_or_path = source.weights_dir
        cfg.data.val_files = list(args.data)
        check = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_files=cfg.data.train_files or args.data))
        check_config(check)  # only the model/data/rollout/reward rules matter here; train_files is not needed
    except (ConfigError, ModelNotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = cfg.eval
    settings = dataclasses.replace(
        settings, **{k: v for k, v in (("k", args.k), ("greedy", args.greedy), ("max_prompts", args.max_prompts),
                                      ("seed", args.seed)) if v is not None})
    if settings.k < 1:
        print(f"error: --k {settings.k} must be >= 1", file=sys.stderr)
        return 2

    import torch

    from rlvr.data import DataError, load_examples
    from rlvr.models import load_processor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = args.out or _default_out(source, args.data)
    print(f"model: {args.model}" + (f" (weights {source.state_dict_file})" if source.state_dict_file else ""))
    print(f"config: {config_path or 'defaults'}; data: {', '.join(args.data)}; k={settings.k}, "
          f"greedy={settings.greedy}, temperature={settings.temperature or cfg.rollout.temperature}, "
          f"max_new_tokens={settings.max_new_tokens or cfg.rollout.max_new_tokens}, "
          f"answer_extraction={cfg.reward.answer_extraction}")
    try:
        processor = load_processor(source.processor_dir, cfg.data.min_pixels, cfg.data.max_pixels)
        examples, skips = load_examples(list(args.data), cfg.data, processor)
    except (DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"data: {skips.summary()}")
    try:
        model = load_trained(source, cfg.model.dtype, cfg.model.attn_implementation, device,
                              cfg.model.lora)
    except (ModelNotFound, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    evaluator = Evaluator(cfg, processor, examples, settings)
    engine = model
    if cfg.rollout.engine != "hf":  # e.g. rollout.engine=vllm on the command line
        from rlvr.models import stop_token_ids
        from rlvr.rollout import make_engine

        engine = make_engine(cfg, stop_token_ids(processor, model), processor.tokenizer.pad_token_id)
        engine.sync_weights(model)  # the weights as loaded (a run's final or adapter weights), not the base's
    metrics = evaluator.run(engine)
    os.makedirs(out_dir, exist_ok=True)
    preds, greedy_preds = os.path.join(out_dir, "predictions.jsonl"), os.path.join(out_dir, "predictions_greedy.jsonl")
    evaluator.write_predictions(preds, greedy_preds)
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "data": args.data, "k": settings.k, **metrics}, f, indent=2)
    page = _sample_page(out_dir, evaluator, args.samples)
    print(f"\nevaluated {len(evaluator.examples)} prompts x {settings.k} samples in {metrics['time/eval_s']:.1f} s")
    print(format_metrics({k: v for k, v in metrics.items() if k != "time/eval_s"}))
    print(f"\npredictions: {preds}" + (f"\ngreedy predictions: {greedy_preds}" if evaluator.greedy_predictions else ""))
    if page:
        print(f"samples page: {page}")
    print(f"metrics: {os.path.join(out_dir, 'metrics.json')}")
    print(f"re-score: python -m rlvr.score {preds}  (the rows carry answer_extraction={cfg.reward.answer_extraction})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
