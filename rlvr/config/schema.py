"""The config tree: one dataclass per section, every default and each section's own rules beside its fields.

Each section's ``problems()`` lists what is wrong with its own values (empty = fine), with the
fix in the message; rules that span sections are in ``rlvr.config.checks``. The comments next
to the fields are the keys' help text (``launch/train.py --help-config``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlvr.config.engines import ENGINES, RolloutCorrectionConfig, VLLMConfig
from rlvr.config.problems import ConfigError, Problems  # noqa: F401 (re-exported)
from rlvr.config.sampling import DynamicSamplingConfig
from rlvr.config.tools import ToolServiceConfig, ToolsConfig  # noqa: F401 (re-exported)


# The choices of algorithm.loss and algorithm.aggregation. rlvr.losses registers the losses by
# these names and rlvr.aggregation takes its modes from here (tests/test_losses.py ties them).
LOSS_NAMES = ("sapo", "grpo", "dapo", "dr_grpo", "gspo", "cispo", "sft")  # sft: supervised cold start, rlvr.sft
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
# transformers attention kernels; sdpa works everywhere, flash_attention_* on CUDA with their package
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DATA_FORMATS = ("auto", "jsonl", "disk", "parquet", "hub")
LR_SCHEDULES = ("constant", "cosine")
ANSWER_EXTRACTIONS = ("boxed", "last_number")
COMMAND_LINE = "command line"  # the source named in errors about `key=value` overrides


# Every linear layer of the language model (attention, MLP, and linear-attention projections;
# not the output head). Only nn.Linear modules are adapted, and vision-tower matches are
# dropped unless model.lora.vision_tower=true.
LORA_TARGETS = r"(.*\.)?language_model\..*"


@dataclass
class LoraConfig:
    rank: int = 0  # adapter rank r; 0 = no LoRA, train the full model
    alpha: float = 16.0  # adapter scale numerator: updates are scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: str = LORA_TARGETS  # regex, full match on module names (model.named_modules()), Linear only
    vision_tower: bool = False  # also adapt vision-tower layers the regex matches

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.rank >= 0, f"model.lora.rank={self.rank} must be >= 0 (0 = no LoRA, full fine-tuning; "
                                  "8 to 64 is typical).")
        if self.rank > 0:
            p.require(self.alpha > 0, f"model.lora.alpha={self.alpha} must be > 0: adapter updates are scaled by "
                                      "alpha / rank.")
            p.require(0 <= self.dropout < 1, f"model.lora.dropout={self.dropout} must be in [0, 1).")
            try:
                re.compile(self.target_modules)
            except re.error as e:
                p.append(f"model.lora.target_modules={self.target_modules!r} is not a valid regular expression "
                         f"({e}); it is matched in full against module names such as "
                         "'model.language_model.layers.0.self_attn.q_proj'.")
        return p


@dataclass
class ModelConfig:
    name_or_path: str = ""  # local folder or hub id of the policy model; required
    dtype: str = "auto"  # auto (bfloat16 if the GPU supports it, else float32) | float32 | bfloat16 | float16
    attn_implementation: str = "sdpa"  # attention kernel: sdpa | eager | flash_attention_2 | flash_attention_3
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    freeze_vision_tower: bool = False  # train only the language model, keep the vision encoder fixed
    trust_remote_code: bool = False  # allow model code from the hub repository to run
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA adapters (peft) instead of full fine-tuning

    def problems(self) -> Problems:
        p = Problems()
        p.require(bool(self.name_or_path.strip()), "model.name_or_path is empty: there is no policy to train. "
                  "Set it to a local folder or hub id, e.g. model.name_or_path=Qwen/Qwen2.5-VL-3B-Instruct.")
        p.one_of("model.dtype", self.dtype, DTYPES)
        p.one_of("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        if self.attn_implementation.startswith("flash_attention"):
            import importlib.util

            package = "flash_attn" if self.attn_implementation == "flash_attention_2" else "flash_attn_interface"
            p.require(importlib.util.find_spec(package) is not None,
                      f"model.attn_implementation={self.attn_implementation} needs the {package} package, which is "
                      "not installed (pip install flash-attn --no-build-isolation, on a CUDA machine); or use "
                      "model.attn_implementation=sdpa.")
        return p + self.lora.problems()


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # training data: one path/hub id or a list
    val_files: list[str] = field(default_factory=list)  # validation data, same forms; empty = none
    format: str = "auto"  # auto (from the path) | jsonl | disk | parquet | hub
    question_key: str = "question"  # row column holding the question text
    answer_key: str = "answer"  # row column holding the reference answer
    images_key: str = "images"  # row column holding a list of images
    image_key: str = "image"  # row column holding a single image (used when images_key is absent)
    id_key: str = "id"  # row column holding the sample id (for logs and errors)
    source_key: str = "source"  # row column naming the sub-dataset (for per-source metrics)
    # user-turn text; "{question}" is replaced by the question (use str.replace: the default has "{}")
    prompt_template: str = (
        "{question}\n\nThink step by step. Put your final answer, a single number, in \\boxed{}."
    )
    system_prompt: str | None = None  # system-turn text; None = no system turn
    min_pixels: int = 3136  # smallest image area after resizing, pixels
    max_pixels: int = 1003520  # largest image area after resizing, pixels
    max_prompt_tokens: int = 2048  # prompt budget, image plus text tokens
    strict: bool = False  # raise on a malformed row instead of skipping it with a warning
    shuffle: bool = True  # shuffle training rows each epoch
    max_rows: int | None = None  # use only the first N rows (debugging); None = all

    def problems(self) -> Problems:
        p = Problems()
        p.require(bool(self.train_files) and all(f.strip() for f in self.train_files),
                  "data.train_files is empty: training needs prompts. Set it to one file or a list, "
                  "e.g. data.train_files=[train.jsonl].")
        p.one_of("data.format", self.format, DATA_FORMATS)
        p.require("{question}" in self.prompt_template, "data.prompt_template has no '{question}' placeholder, so "
                  "the model would never see the question. Add {question} where the question text belongs.")
        p.require(1 <= self.min_pixels <= self.max_pixels, f"data.min_pixels={self.min_pixels} must be >= 1 and <= "
                  f"data.max_pixels={self.max_pixels}: images are resized into that range. Lower min_pixels or "
                  "raise max_pixels.")
        p.require(self.max_prompt_tokens >= 1, f"data.max_prompt_tokens={self.max_prompt_tokens} leaves no room for "
                                               "a prompt; use e.g. 2048.")
        return p


@dataclass
class RolloutConfig:
    group_size: int = 8  # G: responses sampled per (image, question)
    max_new_tokens: int = 1024  # response length cap, tokens
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling mass; 1.0 = off
    top_k: int = 0  # top-k sampling; 0 = off
    micro_batch_size: int = 32  # sequences per generate call
    # Encode each prompt's images and prefill its prompt once, then expand the KV cache (and
    # the M-RoPE offsets) to its G samples; false runs vision and prefill for every sample.
    shared_prefill: bool = True
    min_new_tokens: int = 0  # the stop tokens are suppressed before this many new tokens (benchmarks)
    # ZeRO-3 only: gather the full weights on every GPU for the whole rollout (fast, needs the
    # model's 16-bit size free on each GPU). false generates through the partitioned weights,
    # gathering every layer again for every token: no extra memory, but many times slower.
    zero3_gather_weights: bool = True
    # hf: transformers generate in the training process (the reference) | vllm: a colocated vLLM
    # engine per process (pip install 'rlvr[vllm]'; README, Rollout engines)
    engine: str = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)  # rollout.engine=vllm only

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("rollout.engine", self.engine, ENGINES)
        # >= 2 for RL, 1 for SFT: rlvr.config.checks.group_problems, which knows algorithm.loss
        p.require(self.group_size >= 1, f"rollout.group_size={self.group_size} must be >= 1 (8 is typical).")
        p.require(self.temperature > 0, f"rollout.temperature={self.temperature} must be > 0: the policy loss needs "
                                        "sampled responses whose log-probs match the policy; use 1.0.")
        p.require(0 < self.top_p <= 1, f"rollout.top_p={self.top_p} must be in (0, 1]; 1.0 turns nucleus sampling off.")
        p.require(self.top_k >= 0, f"rollout.top_k={self.top_k} must be >= 0; 0 turns top-k sampling off.")
        p.require(self.max_new_tokens >= 1, f"rollout.max_new_tokens={self.max_new_tokens} must be >= 1 so there is "
                                            "a response to reward.")
        p.require(self.micro_batch_size >= 1, f"rollout.micro_batch_size={self.micro_batch_size} must be >= 1 "
                                              "(sequences per generate call).")
        p.require(0 <= self.min_new_tokens <= self.max_new_tokens, f"rollout.min_new_tokens={self.min_new_tokens} "
                  f"must be between 0 and rollout.max_new_tokens={self.max_new_tokens}.")
        return p + self.vllm.problems()


@dataclass
class RewardFunctionConfig:
    name: str  # import path "module:function"
    weight: float = 1.0  # multiplier of this function's reward in the total


@dataclass
class RewardConfig:
    # reward functions, summed with their weights
    functions: list[RewardFunctionConfig] = field(
        default_factory=lambda: [RewardFunctionConfig("rlvr.rewards:numeric_reward", 1.0)]
    )
    answer_extraction: str = "boxed"  # boxed (last \boxed{...}) | last_number
    rel_tol: float = 0.0  # extra relative tolerance on top of equality after rounding to 6 decimals; 0 = none
    timeout_s: float = 5.0  # per-response reward time limit, seconds
    num_workers: int = 2  # reward worker processes
    batch_timeout_s: float = 20.0  # wall-time budget of one reward call (a batch); answers left then score 'timeout'; 0 = none

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("reward.answer_extraction", self.answer_extraction, ANSWER_EXTRACTIONS)
        p.require(bool(self.functions), "reward.functions is empty: every response would score 0 and nothing "
                  "would be learned. Add one, e.g. reward.functions=[{name: 'rlvr.rewards:numeric_reward'}].")
        for i, fn in enumerate(self.functions):
            module, sep, func = fn.name.partition(":")
            p.require(bool(sep and module.strip() and func.strip()), f"reward.functions[{i}].name={fn.name!r} must "
                      "be an import path 'module:function' so it can be imported, e.g. 'rlvr.rewards:numeric_reward'.")
        return p


@dataclass
class AlgorithmConfig:
    loss: str = "sapo"  # policy loss, one of LOSS_NAMES
    aggregation: str | None = None  # token/sequence reduction, one of AGGREGATIONS; None = loss's own
    tau_pos: float | None = None  # SAPO gate temperature for positive advantages; None = the loss's own (1.0)
    tau_neg: float | None = None  # SAPO gate temperature for negative advantages; None = the loss's own (1.05)
    # ratio clip epsilons of the clipped losses; None = the loss's own default
    # (grpo/dr_grpo 0.2/0.2, dapo 0.2/0.28, gspo 3e-4/4e-4, cispo upper 5.0; see rlvr.losses)
    clip_low: float | None = None  # lower ratio clip epsilon
    clip_high: float | None = None  # upper ratio clip epsilon
    log_ratio_clamp: float | None = None  # SAPO: clamp on |log ratio| before exp, nats; None = the loss's own (20)
    kl_coef: float = 0.0  # weight of the KL penalty to the reference model; 0 = no reference
    # weight of the entropy bonus (loss -= coef * mean token entropy): keeps sampling answers the
    # policy would otherwise stop trying; 0 = off (README, When learning stalls)
    entropy_coef: float = 0.0
    scale_by_std: bool = True  # divide advantages by the group's reward std
    adv_eps: float = 1e-6  # added to the group std before dividing
    # importance weights for the gap between the sampling engine and the training forward
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)

    def problems(self) -> Problems:
        p = Problems()
        p.one_of("algorithm.loss", self.loss, LOSS_NAMES)
        p.require(self.aggregation is None or self.aggregation in AGGREGATIONS, f"algorithm.aggregation="
                  f"{self.aggregation!r} is not supported; choose one of {', '.join(AGGREGATIONS)}, or null for the "
                  "loss's own default.")
        p.require(self.entropy_coef >= 0, f"algorithm.entropy_coef={self.entropy_coef} must be >= 0 (0 = no entropy "
                                          "bonus; a negative one would push the policy to collapse). The demo uses 0.02.")
        for key, tau in (("algorithm.tau_pos", self.tau_pos), ("algorithm.tau_neg", self.tau_neg)):
            p.require(tau is None or tau > 0, f"{key}={tau} must be > 0: SAPO's gate is sigmoid(tau * (ratio - 1)) "
                                              "* 4 / tau. Use e.g. 1.0, or null for the loss's own.")
        return p + self.rollout_correction.problems()


@dataclass
class TrainerConfig:
    max_steps: int = 100  # RL steps, one rollout batch each
    prompts_per_step: int = 8  # prompts per rollout batch (sequences = prompts * group_size)
    num_minibatches: int = 1  # optimizer steps per rollout batch
    micro_batch_size: int = 8  # sequences per forward/backward
    # Token budget per forward/backward instead of a fixed count; None = micro_batch_size.
    # Cost of a micro-batch: sequences x its longest sequence (prompt with image placeholders
    # + response) + the vision-tower patches of its prompts' images, each prompt's once (its
    # samples share them). Samples are packed longest first; one over the budget by itself
    # runs alone (their share: metric batch/over_budget). The gradient is the same either
    # way: only memory and speed change. micro_batch_size is then unused.
    micro_batch_tokens: int | None = None
    lr: float = 1e-6  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW epsilon
    lr_schedule: str = "constant"  # constant | cosine (after warmup)
    warmup_steps: int = 0  # linear warmup, optimizer steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0  # gradient clipping threshold, L2 norm
    seed: int = 42  # seed for sampling, shuffling and init
    logprob_chunk_size: int = 512  # tokens per chunk when computing log-probs
    # Rows of one prompt in a micro-batch run the prompt (and its images) once, then their
    # responses on its KV cache; same log-probs and gradients (see README, Speed and memory).
    shared_prompt_forward: bool = True
    # A collective that waits longer than this fails the run with an error instead of hanging
    # (a rank died or is stuck). Must exceed the slowest step between collectives.
    collective_timeout_s: int = 1800
    # online difficulty filter: retire solved prompts, DAPO's dynamic sampling (README, Difficulty filtering)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.max_steps >= 1, f"trainer.max_steps={self.max_steps} must be >= 1 (RL steps to run).")
        p.require(self.lr >= 0, f"trainer.lr={self.lr} must be >= 0; a negative rate would ascend the loss.")
        p.one_of("trainer.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        p.require(self.warmup_steps >= 0, f"trainer.warmup_steps={self.warmup_steps} must be >= 0 (0 = no warmup).")
        p.require(0 <= self.min_lr_ratio <= 1, f"trainer.min_lr_ratio={self.min_lr_ratio} must be in [0, 1] "
                                               "(a fraction of trainer.lr).")
        p.require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                  f"trainer.adam_betas={self.adam_betas} must be two numbers in [0, 1), e.g. [0.9, 0.999].")
        for key, n in (("trainer.prompts_per_step", self.prompts_per_step),
                       ("trainer.num_minibatches", self.num_minibatches),
                       ("trainer.micro_batch_size", self.micro_batch_size)):
            p.require(n >= 1, f"{key}={n} must be >= 1.")
        p.require(self.micro_batch_tokens is None or self.micro_batch_tokens >= 1,
                  f"trainer.micro_batch_tokens={self.micro_batch_tokens} must be a positive number of tokens per "
                  "micro-batch (text rows padded to the longest + vision patches), e.g. 16384, or null to use "
                  "trainer.micro_batch_size.")
        p.require(self.collective_timeout_s >= 1, f"trainer.collective_timeout_s={self.collective_timeout_s} must be "
                  ">= 1 second; it bounds how long a rank waits for the others before failing (1800 is a safe default).")
        return p + self.dynamic_sampling.problems()


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # save every N RL steps; 0 = only at the end
    keep_last: int = 2  # number of recent checkpoints kept on disk
    save_final_model: bool = True  # also save the final model in Hugging Face format
    # resume=auto/PATH with a config that changes what the run means (model, data, algorithm,
    # batch shape, lr schedule; see rlvr.checkpoint.SAFE_RESUME_CHANGES) is refused unless true
    allow_resume_changes: bool = False

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.keep_last >= 1, f"checkpoint.keep_last={self.keep_last} must be >= 1, or resuming would find "
                                       "no checkpoint.")
        p.require(self.every_steps >= 0, f"checkpoint.every_steps={self.every_steps} must be >= 0 (0 = only at the end).")
        return p


@dataclass
class EvalConfig:
    every_steps: int = 0  # evaluate on data.val_files every N RL steps; 0 = only at the end (no val_files: never)
    k: int = 8  # sampled responses per prompt: pass@1 is their mean; pass@k and maj@k use all k
    greedy: bool = True  # also decode one greedy response per prompt (eval/greedy)
    max_prompts: int | None = None  # evaluate the first N validation rows only; None = all
    temperature: float | None = None  # sampling temperature; None = rollout.temperature
    max_new_tokens: int | None = None  # response length cap, tokens; None = rollout.max_new_tokens
    seed: int = 1234  # sampling seed, the same at every evaluation: evaluations differ only by the weights

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.k >= 1, f"eval.k={self.k} must be >= 1 (sampled responses per validation prompt; 8 is typical).")
        p.require(self.every_steps >= 0, f"eval.every_steps={self.every_steps} must be >= 0 (0 = evaluate only at "
                                         "the end).")
        p.require(self.max_prompts is None or self.max_prompts >= 1, f"eval.max_prompts={self.max_prompts} must be "
                                                                     ">= 1, or null for all.")
        p.require(self.temperature is None or self.temperature > 0, f"eval.temperature={self.temperature} must be "
                                                                    "> 0, or null for rollout.temperature.")
        p.require(self.max_new_tokens is None or self.max_new_tokens >= 1, f"eval.max_new_tokens="
                                                                           f"{self.max_new_tokens} must be >= 1, or null.")
        return p


@dataclass
class LogConfig:
    wandb: bool = False  # log to Weights & Biases
    project: str = "rlvr"  # wandb project
    run_name: str | None = None  # wandb run name; None = derived from output_dir
    tags: list[str] = field(default_factory=list)  # wandb tags
    group: str | None = None  # wandb group
    progress_bar: bool = True  # a progress bar on a terminal; plain lines with ETA when the console is a file
    print_every: int = 0  # steps between plain progress lines (console not a terminal); 0 = about 20 per run
    samples_every: int = 50  # a page of rollouts (samples/step_N.html) and a wandb table every N steps and at step 1; 0 = off
    samples_per_step: int = 4  # rollouts on each samples page
    plots: bool = True  # write <output_dir>/plots/*.png at each evaluation and at the end

    def problems(self) -> Problems:
        p = Problems()
        p.require(self.samples_every >= 0 and self.samples_per_step >= 0, "log.samples_every and "
                  "log.samples_per_step must be >= 0 (0 turns the samples pages off).")
        p.require(self.print_every >= 0, f"log.print_every={self.print_every} must be >= 0 (0 = about 20 lines per run).")
        return p


@dataclass
class Config:
    output_dir: str = "runs/default"  # run directory: checkpoints, logs, resolved config
    # None: a fresh run (refuses an output_dir that already holds one) | auto: continue from the
    # newest complete checkpoint in output_dir, or start fresh if there is none | a checkpoint folder.
    # A resume compares the config with the run's own and refuses changes to what the run means
    # (see checkpoint.allow_resume_changes)
    resume: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)  # tools the policy may call (multi-turn rollouts)

    def problems(self) -> Problems:
        """Every section's own problems, in section order (cross-section rules: ``rlvr.config.checks``)."""
        p = Problems()
        p.require(self.resume is None or bool(self.resume.strip()), "resume is empty: use resume=auto, a checkpoint "
                                                                    "folder, or leave it unset for a fresh run.")
        for section in (self.model, self.data, self.rollout, self.reward, self.algorithm, self.trainer,
                        self.checkpoint, self.eval, self.log, self.tools):
            p += section.problems()
        return p
