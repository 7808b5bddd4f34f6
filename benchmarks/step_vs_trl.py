"""Seconds per RL step: rlvr's Trainer against TRL's GRPOTrainer (loss_type="sapo") on one fixed workload.

    .venv/bin/python benchmarks/step_vs_trl.py [--warmup 1] [--steps 5] [--threads N] [--quick]
    .venv-vllm/bin/python benchmarks/step_vs_trl.py --engine vllm [--new-tokens 256]      # 1 thread each

``--engine`` is rlvr's rollout engine (``rollout.engine``): ``hf`` (transformers' generate, the
default) or ``vllm`` (a colocated vLLM engine, sent the policy's weights after every update).
TRL always samples with its default, transformers' generate (``use_vllm=False``): the
comparison is rlvr as a user runs it against TRL as a user runs it out of the box.

One step is a whole RL step on each side: rollout (sample G responses per prompt), reward,
old log-probs, and one optimizer update. Both trainers get the same things:

- the same tiny Qwen2.5-VL with random weights (text hidden 256, 4 layers; vision depth 4),
  written once to a temporary folder by ``rlvr.devtools.make_tiny_model`` and loaded from there
  by both, in float32 with SDPA attention;
- the same prompts: 448x448 PNGs (256 image tokens each; ``max_pixels`` is raised in both
  processors so the image is not shrunk) and one question, with numeric gold answers;
- the same reward, ``rlvr.rewards:numeric_reward`` (through a thin wrapper for TRL's calling
  convention), scored by the same process-wide verifier;
- G = 8 responses for each of 2 prompts per step, exactly 64 new tokens each (the stop
  tokens are suppressed in both, so no response ends early), temperature 1.0, no top-k/top-p;
- AdamW with the same learning rate, betas, epsilon and no weight decay, a constant
  schedule, gradient clipping at 1.0, one optimizer step per rollout over the whole batch in
  one micro-batch, no KL term, no gradient checkpointing, SAPO with tau_pos 1.0 and tau_neg 1.05.

Old log-probs: with one update per rollout both trainers take them as the detached
log-probs of the training forward (rlvr ``num_minibatches=1``; TRL ``num_iterations=1``
with ``steps_per_generation == gradient_accumulation_steps``), so neither runs an extra
forward for them. The steps alternate (TRL, rlvr, TRL, ...) so load from other processes
falls on both alike; the first ``--warmup`` steps of each are not counted.

How each side is driven:

- rlvr: ``rlvr.trainer.Trainer`` built from ``recipes/demo.yaml`` plus overrides, and its
  ``step(i)`` called once per step; phase times are its own ``time/*_s`` metrics.
- TRL: ``GRPOTrainer.train()`` with ``max_steps = warmup + steps``; a callback runs one
  rlvr step at the end of every TRL optimizer step, so the two alternate. A TRL step is
  timed from the end of the previous rlvr step to TRL's ``on_step_end``: it includes TRL's
  dataloader fetch and its bookkeeping after the previous step (logging is off). Its phases
  come from timing ``_generate`` (rollout) and ``_calculate_rewards`` (reward); "update" is
  the rest of the step (re-processing the images, advantages, forward/backward, optimizer).

Stop tokens are suppressed until the 64th new token in both (``rollout.min_new_tokens``;
TRL: ``generation_kwargs={"min_new_tokens": ...}``), and the vision placeholder tokens
rlvr never samples are suppressed in TRL too. After the first step, both sides' work is
checked and printed: sequences, response lengths, prompt and image tokens, rewards computed.

Everything runs on CPU (CUDA is hidden) with ``--threads`` torch threads (default: all cores
with ``--engine hf``, 1 with ``--engine vllm``).
The two trainers share accelerate's process-wide state; with one micro-batch per optimizer
step on both sides, that sharing changes nothing.

With ``--engine vllm`` both trainers run in one process of the vLLM environment
(``.venv-vllm``: vLLM's CPU wheel pins transformers below the main environment's; TRL
1.16 installs there without moving torch, transformers or vLLM: ``pip install trl==1.16.0
datasets``). One process and one transformers for both is the fair and simple choice: the
TRL side and the rlvr side load the same model with the same library, take turns on the
same cores, and get the same thread count. ``OMP_NUM_THREADS`` is set to ``--threads``
before torch is imported, so vLLM's OpenMP kernels use as many threads as torch's; torch's
count is checked after every step of either trainer and set back if a step changed it (the
report says if one did). With 2 threads on a 2-core machine shared with other work vLLM's
decode times swung by 10x (issue 14), so with ``--engine vllm`` both sides get 1 thread
unless ``--threads`` says otherwise. rlvr's phases then include ``sync``, the weight sync
to the engine after each update (``time/sync_s``; TRL's generate samples from the live
weights and has none). vLLM's engine starts (and compiles, unless ``rollout.vllm.enforce_eager``)
in the Trainer's constructor and on its first generate: the warm-up step is not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Settings:
    group_size: int = 8  # G: responses per prompt
    prompts: int = 2  # prompts per step
    new_tokens: int = 64  # tokens generated per response, exactly
    image_size: int = 448  # square images, pixels
    hidden: int = 256  # text hidden size
    layers: int = 4  # text decoder layers
    vision_depth: int = 4  # vision transformer blocks
    warmup: int = 1  # steps per trainer not counted
    steps: int = 5  # timed steps per trainer
    lr: float = 1e-5
    threads: int = 0  # torch (and OpenMP) threads for both trainers; 0 = all cores with hf, 1 with vllm
    engine: str = "hf"  # rlvr's rollout.engine: hf | vllm
    extra: tuple[str, ...] = ()  # more rlvr config overrides, key=value (--rlvr, repeatable)


# --quick: small enough for a smoke test to finish in well under a minute.
QUICK = {"group_size": 4, "prompts": 1, "new_tokens": 8, "image_size": 112, "hidden": 64, "layers": 2,
         "vision_depth": 2, "warmup": 0, "steps": 1}

ENGINES = ("hf", "vllm")
HEADS = 4  # attention heads of rlvr.devtools.make_tiny_model's text model
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
QUESTION = "How many rectangles are in the image? Put your final answer, a single number, in \\boxed{}."


def parse_args(argv: list[str] | None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes, one step: {QUICK}")
    parser.add_argument("--rlvr", action="append", default=[], metavar="KEY=VALUE",
                        help="another rlvr config override (repeatable), e.g. rollout.vllm.enforce_eager=true")
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value}" + {"threads": " (all cores with --engine hf, 1 with vllm)",
                                                       "engine": f" ({' | '.join(ENGINES)})"}.get(name, ""))
    args = parser.parse_args(argv)
    chosen = {k: v for k, v in asdict(defaults).items() if k != "extra"} | (QUICK if args.quick else {})
    if args.quick and args.engine == "vllm":
        chosen["hidden"] = 128  # head size 32: vLLM's CPU attention has no kernel for QUICK's 16
    chosen.update({k: v for k, v in vars(args).items() if k in chosen and v is not None})
    s = Settings(**chosen, extra=tuple(args.rlvr))
    if s.image_size % 28:
        parser.error(f"--image-size {s.image_size} must be a multiple of 28 (14-px patches merged 2x2) "
                     "so the processor does not resize it")
    if s.engine not in ENGINES:
        parser.error(f"--engine {s.engine!r}: choose one of {', '.join(ENGINES)}")
    if s.engine == "vllm" and s.hidden // HEADS not in VLLM_CPU_HEAD_SIZES:
        parser.error(f"--hidden {s.hidden} gives attention heads of {s.hidden // HEADS} (the model has {HEADS} "
                     f"heads); vLLM's CPU attention needs a head size in {VLLM_CPU_HEAD_SIZES}: try --hidden 256")
    if s.group_size < 2 or s.prompts < 1 or s.new_tokens < 1 or s.steps < 1 or s.warmup < 0:
        parser.error("need --group-size >= 2, --prompts >= 1, --new-tokens >= 1, --steps >= 1, --warmup >= 0")
    # vLLM's CPU kernels swung 10x with 2 OpenMP threads on a shared 2-core machine, and were
    # stable with 1 (issue 14): with --engine vllm both trainers get 1 thread unless told otherwise.
    s.threads = s.threads or (1 if s.engine == "vllm" else os.cpu_count() or 1)
    return s


# --------------------------------------------------------------------------- the workload


def write_data(out: Path, s: Settings) -> list[dict]:
    """Rows with a 448x448 PNG of 1-9 coloured rectangles; the answer is how many."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(0)
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(max(4, 2 * s.prompts)):
        count = rng.randint(1, 9)
        image = Image.new("RGB", (s.image_size, s.image_size), (250, 250, 250))
        draw = ImageDraw.Draw(image)
        for _ in range(count):
            x, y = rng.randrange(s.image_size - 40), rng.randrange(s.image_size - 40)
            w, h = rng.randint(10, 40), rng.randint(10, 40)
            draw.rectangle([x, y, x + w, y + h], fill=tuple(rng.randrange(256) for _ in range(3)))
        path = out / "images" / f"{i:03d}.png"
        image.save(path)
        rows.append({"id": f"bench-{i}", "question": QUESTION, "answer": str(count), "images": [str(path)]})
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def image_tokens(s: Settings) -> int:
    return (s.image_size // 28) ** 2


def rlvr_overrides(s: Settings, tmp: Path) -> list[str]:
    batch = s.prompts * s.group_size
    return [
        f"output_dir={tmp / 'rlvr-run'}",
        f"model.name_or_path={tmp / 'model'}",
        "model.dtype=float32",
        f"data.train_files=[{tmp / 'data' / 'train.jsonl'}]",
        "data.val_files=[]",
        f"data.max_pixels={s.image_size ** 2}",
        f"data.max_prompt_tokens={image_tokens(s) + 256}",
        f"rollout.group_size={s.group_size}",
        f"rollout.max_new_tokens={s.new_tokens}",
        f"rollout.min_new_tokens={s.new_tokens}",
        f"rollout.micro_batch_size={batch}",  # one generate call, as TRL makes
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        "algorithm.loss=sapo",
        "algorithm.kl_coef=0.0",
        "algorithm.tau_pos=1.0",  # SAPO's own defaults, set explicitly: TRL is given the same
        "algorithm.tau_neg=1.05",
        f"trainer.prompts_per_step={s.prompts}",
        "trainer.num_minibatches=1",
        f"trainer.micro_batch_size={batch}",
        f"trainer.lr={s.lr}",
        "trainer.lr_schedule=constant",
        "trainer.warmup_steps=0",
        "trainer.weight_decay=0.0",
        "trainer.max_grad_norm=1.0",
        f"trainer.max_steps={s.warmup + s.steps}",
        "log.wandb=false",
        "log.progress_bar=false",
        "log.samples_every=0",
        "log.plots=false",
        f"rollout.engine={s.engine}",
        # vLLM: every sequence of the step decoded together (the HF engine's one generate call)
        *([f"rollout.vllm.max_num_seqs={batch}"] if s.engine == "vllm" else []),
        *s.extra,
    ]


def trl_numeric_reward(prompts, completions, answer, **columns):
    """``rlvr.rewards:numeric_reward`` under TRL's calling convention.

    TRL passes conversational completions as ``[{"role": "assistant", "content": text}]`` and
    dataset columns by name (``answer`` here), plus its own extras (trainer_state, log_metric, ...).
    """
    from rlvr.rewards import numeric_reward

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return numeric_reward(texts, answer)


# --------------------------------------------------------------------------- instrumentation


class Timer:
    """Wraps a callable, adding its wall time to ``total`` and keeping its last result."""

    def __init__(self, fn):
        self.fn, self.total, self.last = fn, 0.0, None

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        self.last = self.fn(*args, **kwargs)
        self.total += time.perf_counter() - t0
        return self.last

    def take(self) -> float:
        total, self.total = self.total, 0.0
        return total


def rlvr_facts(trainer, image_id: int) -> dict:
    """What rlvr's last update saw (recorded by ``record_rlvr_update``)."""
    prompts, responses, advantages = trainer._bench_last_update
    lengths = [len(r.token_ids) for r in responses]
    return {
        "sequences": len(responses),
        "response tokens (min, max)": (min(lengths), max(lengths)),
        # how responses shorter than rollout.min_new_tokens ended, if any: length, reason, last token
        "short responses (ended by)": sorted({
            f"{len(r.token_ids)}: {r.finish_reason} {r.token_ids[-1:].tolist()}" for r in responses
            if len(r.token_ids) < trainer.cfg.rollout.min_new_tokens}) or "-",
        "prompt tokens": sorted({len(p.input_ids) for p in prompts}),
        "image tokens per prompt": sorted({int((p.input_ids == image_id).sum()) for p in prompts}),
        "rewards computed": trainer._bench_rewards,
        "advantages": tuple(advantages.shape),
        "loss": trainer.cfg.algorithm.loss,
        "optimizer steps so far": int(trainer.scheduler.last_epoch),
        # rlvr.update: with one minibatch the update runs at the rollout weights
        "old log-probs": "detached training forward" if trainer.cfg.trainer.num_minibatches == 1 else "extra forward",
    }


def record_rlvr_update(trainer) -> None:
    run, reward_fn = trainer.update.run, trainer.reward_fn

    def recorded_run(prompts, responses, advantages, step):
        trainer._bench_last_update = (prompts, responses, advantages)
        return run(prompts, responses, advantages, step)

    def counted_reward(texts, answers, **columns):
        trainer._bench_rewards = len(texts)
        return reward_fn(texts, answers, **columns)

    trainer.update.run = recorded_run
    trainer.reward_fn = counted_reward


def trl_facts(trainer, batch: dict, rewards_computed: int) -> dict:
    """What TRL's first generation batch held (kept by ``TRLProbe``)."""
    image_id = trainer.model.config.image_token_id
    lengths = batch["completion_mask"].sum(1)
    prompt_lengths = batch["prompt_mask"].sum(1)
    image_counts = (batch["prompt_ids"] == image_id).sum(1)
    return {
        "sequences": int(batch["completion_ids"].shape[0]),
        "response tokens (min, max)": (int(lengths.min()), int(lengths.max())),
        "prompt tokens": sorted(set(prompt_lengths.tolist())),
        "image tokens per prompt": sorted(set(image_counts.tolist())),
        "rewards computed": rewards_computed,
        "advantages": tuple(batch["advantages"].shape),
        "loss": trainer.loss_type,
        "optimizer steps so far": int(trainer.state.global_step),
        "old log-probs": "detached training forward" if batch.get("old_per_token_logps") is None else "extra forward",
    }


def check_facts(name: str, facts: dict, s: Settings) -> None:
    want = {
        "sequences": s.prompts * s.group_size,
        "response tokens (min, max)": (s.new_tokens, s.new_tokens),
        "image tokens per prompt": [image_tokens(s)],
        "rewards computed": s.prompts * s.group_size,
        "loss": "sapo",
    }
    wrong = {k: (facts[k], v) for k, v in want.items() if facts[k] != v}
    if wrong:
        short = facts.get("short responses (ended by)", "-")
        raise SystemExit(f"{name} did not do the benchmark's work: " + "; ".join(
            f"{k} = {got}, expected {exp}" for k, (got, exp) in wrong.items())
            + (f" (short responses, length: finish reason and last token: {short})" if short != "-" else ""))


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    s = parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # fp32 on CPU for both, whatever the machine has
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    # Before torch is imported: OpenMP's pool (torch's and vLLM's CPU kernels) gets --threads too.
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp is not None and omp != str(s.threads):
        print(f"note: OMP_NUM_THREADS={omp} replaced by --threads {s.threads}, so both trainers get the same")
    os.environ["OMP_NUM_THREADS"] = str(s.threads)
    import torch

    torch.set_num_threads(s.threads)
    from rlvr.rollout.vllm_env import patch_broken_torchvision, prepare

    if s.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise SystemExit("--engine vllm: vLLM is not importable here; run the benchmark with the vLLM "
                             "environment's Python (.venv-vllm/bin/python; pip install 'rlvr[vllm]')")
        prepare()  # vLLM's environment variables, before vLLM is imported
    # In the vLLM environment, torchvision (a CUDA build) is importable only after this; TRL's
    # and transformers' Trainer import it, whichever engine rlvr uses. Elsewhere: nothing to do.
    patch_broken_torchvision()
    try:
        import trl
    except ImportError as e:
        raise SystemExit(f"TRL is not importable ({e}); install it with: pip install -e '.[bench]' "
                         "(in the vLLM environment: pip install trl==1.16.0 datasets)") from None

    with tempfile.TemporaryDirectory(prefix="rlvr-bench-") as tmp_name:
        tmp = Path(tmp_name)
        run(s, tmp, trl.__version__)


def build_rlvr(s: Settings, tmp: Path):
    """rlvr's Trainer on the demo recipe resized to the workload; returns (trainer, its config)."""
    from rlvr.config import check_config, load_config
    from rlvr.samples import SampleLogger
    from rlvr.trainer import Trainer

    cfg = load_config(ROOT / "recipes" / "demo.yaml", rlvr_overrides(s, tmp))
    check_config(cfg)
    trainer = Trainer(cfg)
    trainer.samples = SampleLogger(cfg, None, enabled=False)  # step() logs samples; train() usually makes this
    record_rlvr_update(trainer)
    return trainer, cfg


class ThreadGuard:
    """Keeps torch's thread count at ``--threads`` for both trainers, and says if a step changed it
    (vLLM's CPU worker may set its own): ``check`` after a trainer's step restores the count."""

    def __init__(self, threads: int):
        self.threads, self.changed = threads, []

    def check(self, name: str, step: int) -> None:
        import torch

        if torch.get_num_threads() != self.threads:
            self.changed.append(f"{name} step {step + 1}: {torch.get_num_threads()}")
            torch.set_num_threads(self.threads)

    def report(self) -> None:
        if self.changed:
            print(f"torch threads changed during a step and were reset to {self.threads}: {'; '.join(self.changed)}")
        else:
            print(f"torch threads stayed {self.threads} through every step of both trainers")


class TRLProbe:
    """Times TRL's rollout (``_generate``) and reward (``_calculate_rewards``) and keeps the
    first generation batch, by wrapping those methods on one trainer instance."""

    def __init__(self, trainer):
        self.generate = Timer(trainer._generate)
        self.reward = Timer(trainer._calculate_rewards)
        self.score = Timer(trainer._generate_and_score_completions)
        trainer._generate, trainer._calculate_rewards = self.generate, self.reward
        trainer._generate_and_score_completions = self.score

    def rewards_computed(self) -> int:
        return int(self.reward.last.shape[0])  # [sequences, reward functions]


def build_trl(s: Settings, tmp: Path, cfg, rows: list[dict], stop_ids: list[int], callback):
    """TRL's GRPOTrainer with the same model folder, processor settings, data, reward and hyperparameters."""
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.models import load_processor, never_sample_ids

    model = AutoModelForImageTextToText.from_pretrained(str(tmp / "model"), dtype=torch.float32,
                                                        attn_implementation=cfg.model.attn_implementation)
    processor = load_processor(str(tmp / "model"), cfg.data.min_pixels, cfg.data.max_pixels)
    dataset = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": cfg.data.prompt_template.replace("{question}", r["question"])}],
         "image": r["images"][0], "answer": r["answer"]} for r in rows
    ]).cast_column("image", datasets.Image())
    t = cfg.trainer
    args = GRPOConfig(
        output_dir=str(tmp / "trl-run"),
        # one generation batch of prompts x G sequences, one micro-batch, one optimizer step on it
        per_device_train_batch_size=s.prompts * s.group_size, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1,
        num_generations=s.group_size, max_completion_length=s.new_tokens,
        temperature=cfg.rollout.temperature, top_p=1.0, top_k=0,
        # responses run to max_completion_length as rlvr's (rollout.min_new_tokens); the vision
        # markers rlvr never samples are suppressed here too
        generation_kwargs={"min_new_tokens": s.new_tokens, "suppress_tokens": never_sample_ids(model)},
        loss_type="sapo", beta=0.0, scale_rewards="group",
        sapo_temperature_pos=cfg.algorithm.tau_pos, sapo_temperature_neg=cfg.algorithm.tau_neg,
        learning_rate=t.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=t.weight_decay,
        adam_beta1=t.adam_betas[0], adam_beta2=t.adam_betas[1], adam_epsilon=t.adam_eps, optim="adamw_torch",
        max_grad_norm=t.max_grad_norm, max_steps=s.warmup + s.steps, seed=t.seed,
        # TRL's defaults differ from rlvr's here: bf16 and gradient checkpointing are on
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", logging_steps=10 ** 6, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[trl_numeric_reward], args=args, train_dataset=dataset,
                          processing_class=processor, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # its end-of-training summary would split our report
    return trainer


def print_settings(s: Settings, cfg, policy, trl_version: str) -> None:
    import torch
    import transformers

    v, tc, t, a = policy.config.vision_config, policy.config.get_text_config(), cfg.trainer, cfg.algorithm
    batch = s.prompts * s.group_size
    params = sum(p.numel() for p in policy.parameters()) / 1e6
    engine = cfg.rollout.engine
    if engine == "vllm":
        import vllm

        v_cfg = cfg.rollout.vllm
        engine = (f"vllm {vllm.__version__} (in-process, enforce_eager {v_cfg.enforce_eager}, max_num_seqs "
                  f"{v_cfg.max_num_seqs}, KV cache {v_cfg.cpu_kv_cache_gib} GiB)")
    print(f"rlvr step vs TRL {trl_version} GRPOTrainer(loss_type='sapo'); transformers {transformers.__version__}, "
          f"torch {torch.__version__}")
    print(f"  rollout: rlvr {engine}; TRL transformers generate (its default)")
    print(f"  model: Qwen2.5-VL, random weights; text hidden {tc.hidden_size}, {tc.num_hidden_layers} layers, "
          f"{tc.num_attention_heads} heads ({tc.num_key_value_heads} kv), vocab {tc.vocab_size}; vision hidden "
          f"{v.hidden_size}, depth {v.depth}; {params:.2f}M parameters; float32, {cfg.model.attn_implementation}")
    print(f"  workload: {s.prompts} prompts x G={s.group_size} = {batch} sequences per step, {s.new_tokens} new "
          f"tokens each (stop tokens suppressed), {s.image_size}x{s.image_size} images ({image_tokens(s)} image "
          f"tokens), temperature {cfg.rollout.temperature}")
    print(f"  update: AdamW lr {t.lr}, betas {tuple(t.adam_betas)}, eps {t.adam_eps}, no weight decay, clip "
          f"{t.max_grad_norm}; 1 optimizer step per rollout, 1 micro-batch of {batch}; SAPO tau +{a.tau_pos}"
          f"/-{a.tau_neg}, no KL")
    print(f"  device: CPU, torch threads {torch.get_num_threads()}, OMP_NUM_THREADS {os.environ['OMP_NUM_THREADS']} "
          f"(set explicitly; {os.cpu_count()} cores seen); "
          f"{s.warmup} warm-up + {s.steps} timed steps each, alternating TRL then rlvr", flush=True)


def report(s: Settings, times: dict[str, list[dict[str, float]]], facts: dict[str, dict]) -> None:
    for name in ("TRL", "rlvr"):
        check_facts(name, facts[name], s)
    if facts["TRL"]["prompt tokens"] != facts["rlvr"]["prompt tokens"]:
        raise SystemExit(f"the prompts differ: TRL {facts['TRL']['prompt tokens']} tokens, "
                         f"rlvr {facts['rlvr']['prompt tokens']}; check the chat template and image sizes")
    print("\nwork done in the first step (checked):")
    for key in facts["rlvr"] | facts["TRL"]:
        print(f"  {key:<28} TRL {facts['TRL'].get(key, '-')!s:<28} rlvr {facts['rlvr'].get(key, '-')}")

    med = {name: {k: statistics.median(r[k] for r in rows[s.warmup:]) for k in rows[0]}
           for name, rows in times.items()}
    print(f"\nmedian seconds over {s.steps} timed step(s):")
    print(f"  {'phase':<8} {'TRL':>9} {'rlvr':>9} {'TRL/rlvr':>9}")
    for k in ("rollout", "sync", "reward", "update", "step"):
        ratio = f"{med['TRL'][k] / med['rlvr'][k]:>9.2f}" if min(med['TRL'][k], med['rlvr'][k]) > 0 else f"{'-':>9}"
        print(f"  {k:<8} {med['TRL'][k]:>9.3f} {med['rlvr'][k]:>9.3f} {ratio}")
    tokens = s.prompts * s.group_size * s.new_tokens
    print(f"  rollout tokens/s: TRL {tokens / med['TRL']['rollout']:.1f}, rlvr ({s.engine}) "
          f"{tokens / med['rlvr']['rollout']:.1f}")
    print(f"\nTRL  median s/step: {med['TRL']['step']:.3f}")
    print(f"rlvr median s/step: {med['rlvr']['step']:.3f}")
    print(f"ratio TRL/rlvr: {med['TRL']['step'] / med['rlvr']['step']:.2f}")


def run(s: Settings, tmp: Path, trl_version: str) -> None:
    from transformers import TrainerCallback

    from rlvr.devtools.make_tiny_model import make_tiny_model

    text = {"hidden_size": s.hidden, "num_hidden_layers": s.layers, "intermediate_size": 4 * s.hidden}
    make_tiny_model("qwen2_5_vl", str(tmp / "model"), text=text, vision={"depth": s.vision_depth})
    rows = write_data(tmp / "data", s)
    rlvr_trainer, cfg = build_rlvr(s, tmp)
    policy = rlvr_trainer.accelerator.unwrap_model(rlvr_trainer.model).policy
    times: dict[str, list[dict[str, float]]] = {"TRL": [], "rlvr": []}
    facts: dict[str, dict] = {}
    threads = ThreadGuard(s.threads)

    class Alternate(TrainerCallback):
        """At the end of each TRL optimizer step: time it, then run and time one rlvr step."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.mark = time.perf_counter()  # after TRL's optimizer and dataloader set-up

        def on_step_end(self, args, state, control, **kwargs):
            trl_s = time.perf_counter() - self.mark
            i = state.global_step - 1
            rollout, reward = probe.generate.take(), probe.reward.take()
            times["TRL"].append({"step": trl_s, "rollout": rollout, "sync": 0.0, "reward": reward,
                                 "update": trl_s - rollout - reward})
            if i == 0:
                facts["TRL"] = trl_facts(trl_trainer, probe.score.last, probe.rewards_computed())

            threads.check("TRL", i)
            t0 = time.perf_counter()
            metrics, _, _ = rlvr_trainer.step(i)
            rlvr_s = time.perf_counter() - t0
            threads.check("rlvr", i)
            times["rlvr"].append({"step": rlvr_s, "rollout": metrics["time/rollout_s"],
                                  "sync": metrics.get("time/sync_s", 0.0), "reward": metrics["time/reward_s"],
                                  "update": metrics["time/update_s"]})
            if i == 0:
                facts["rlvr"] = rlvr_facts(rlvr_trainer, policy.config.image_token_id)
            tag = "warm-up" if i < s.warmup else "timed"
            print(f"step {i + 1}/{s.warmup + s.steps} ({tag}): TRL {trl_s:.3f} s, rlvr {rlvr_s:.3f} s", flush=True)
            self.mark = time.perf_counter()

    trl_trainer = build_trl(s, tmp, cfg, rows, list(rlvr_trainer.stop_ids), Alternate())
    probe = TRLProbe(trl_trainer)
    print_settings(s, cfg, policy, trl_version)
    trl_trainer.train()
    report(s, times, facts)
    threads.report()


if __name__ == "__main__":
    main()
