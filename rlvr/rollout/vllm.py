"""The vLLM engine: one in-process ``vllm.LLM`` per training process, colocated with training.

Sampling contract (the same as the HF engine's, ``rlvr.rollout.engine``): one request per
sample, the j-th sample of a prompt with seed s seeded with ``mix_seed(s, j)`` (vLLM's own
per-request generator: the samples differ from the HF engine's for the same seed, but each
engine reproduces its own in any batch). The G requests of a prompt share its token ids and
images, so prefix caching prefills the prompt and the multimodal caches encode its images
once. Prompts go in as token ids, never as text; each image placeholder run of the prompt is
collapsed to one ``<|image_pad|>``, which vLLM expands again from the images it processes with
``data.min_pixels``/``max_pixels`` (the run's processor settings), and the expanded prompt is
checked against ours so a mismatch fails loudly instead of shifting every position.

Log-probs: ``logprobs_mode="processed_logprobs"`` gives each sampled token's log-prob under the
distribution it was drawn from (temperature-scaled, top-k/top-p filtered). Vision placeholder
tokens (``rlvr.models.never_sample_ids``) are set to -inf by a logits processor before that
distribution is formed, so they are never sampled and are outside its normaliser, exactly as
the training forward leaves them out (``rlvr.logprobs``).

Weight sync: the policy's weights, LoRA merged and ZeRO-3 gathered a bucket at a time
(``rlvr.rollout.weight_sync.iter_weights``), go through vLLM's in-place ``reload_weights``
under their transformers names; then the output head is reprocessed (a tied head kept its
CPU-packed old weights), and the prefix and encoder caches of the old weights are dropped.

vLLM runs in this process and would reseed, and draw from, its global random generators;
``rng_preserved`` keeps them as they were around everything vLLM does here.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from rlvr.batch import PromptInputs, Response
from rlvr.config import RolloutConfig
from rlvr.models import never_sample_ids
from rlvr.rollout.engine import RolloutEngine, SyncReport
from rlvr.rollout.sampling import mix_seed
from rlvr.rollout.vllm_env import inspect_models_in_process, on_cpu, prepare
from rlvr.rollout.weight_sync import WeightStats, iter_weights

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rlvr[vllm]'"
# Head sizes the CPU attention backend of vLLM 0.32 accepts (its kernels' list; others fail at the first generate)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def import_vllm():
    """``vllm``, or a message saying how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"rollout.engine=vllm needs the vllm package, which is not installed here ({e}). "
                          f"Install it with `{INSTALL_HINT}` (GPU machines), or use rollout.engine=hf.") from e
    return vllm


def engine_dtype(dtype: str) -> str:
    """vLLM's dtype for ``model.dtype``: auto is bf16 on GPU and fp32 on CPU, as the training side resolves it."""
    if dtype != "auto":
        return dtype
    return "float32" if on_cpu() else "bfloat16"


def engine_kwargs(cfg, accelerator=None) -> dict:
    """The ``vllm.LLM`` arguments for a run with config ``cfg`` (see ``rollout.vllm.*``)."""
    vcfg = cfg.rollout.vllm
    processes = getattr(accelerator, "num_processes", 1) or 1
    rank = getattr(accelerator, "process_index", 0) or 0
    kwargs = dict(
        model=cfg.model.name_or_path,
        dtype=engine_dtype(cfg.model.dtype),
        trust_remote_code=cfg.model.trust_remote_code,
        enforce_eager=vcfg.enforce_eager,
        max_num_seqs=vcfg.max_num_seqs,
        # with tools, a trajectory's later turns read the prompt and every turn before (ToolRollout.budget)
        max_model_len=vcfg.max_model_len or cfg.data.max_prompt_tokens + (
            cfg.tools.trajectory_tokens(cfg.rollout.max_new_tokens) if cfg.tools.enabled
            else cfg.rollout.max_new_tokens),
        # Each request carries its own seed; this one only seeds what vLLM draws without one.
        seed=cfg.trainer.seed + rank,
        logprobs_mode="processed_logprobs",
        # The model's generation_config.json (Qwen-VL ships top_k=1, repetition_penalty=1.05)
        # must not change the sampling distribution: rollout.* alone defines it.
        generation_config="vllm",
        # Images become exactly the patches the run's processor makes (data.min/max_pixels).
        mm_processor_kwargs={"size": {"shortest_edge": cfg.data.min_pixels, "longest_edge": cfg.data.max_pixels}},
        limit_mm_per_prompt={"image": 64, "video": 0},
        enable_prefix_caching=True,
        logits_processors=[never_sample_processor()],
    )
    if not on_cpu():
        kwargs["gpu_memory_utilization"] = vcfg.gpu_memory_utilization
        kwargs["enable_sleep_mode"] = vcfg.sleep_level > 0
    else:
        # Whole prefills: vLLM 0.32's runner rewinds a seeded request's generator when its prefill
        # is split over steps, which a CPU generator cannot do ("CPU Generator does not use offset";
        # the demo's 256 requests a step split).
        kwargs["enable_chunked_prefill"] = False
        # vLLM caches a linear-attention (Qwen3.5) model's prefixes only with chunked prefill
        # ("Chunked prefill is required for mamba cache mode 'align'"): such a model prefills
        # every sample's prompt on CPU.
        kwargs["enable_prefix_caching"] = not has_linear_attention(cfg.model.name_or_path, cfg.model.trust_remote_code)
    if processes > 1:
        # One independent TP=1 engine per rank inside the already initialised process group
        # (vLLM lays its groups out as external-DP x TP; TRL's and verl's colocated mode).
        kwargs["distributed_executor_backend"] = "external_launcher"
    return kwargs


_PROCESSOR_CLASS = None


def never_sample_processor():
    """A vLLM logits processor class that puts -inf on the vision placeholder tokens of every request.

    It runs before temperature and filtering (it is not argmax-invariant), so greedy decoding
    never picks them either and the processed log-probs are normalised without them. The
    token ids come from the engine's model config, as ``never_sample_ids`` reads the policy's.
    One class serves both of vLLM's model runners: V1 (CPU, and GPU where vLLM picks it) builds
    it as ``(vllm_config, device, is_pin_memory)`` and calls ``apply(logits)``; V2 (the GPU
    default) builds it as ``(vllm_config, req_states)`` and calls ``apply(logits, ctx)``.
    """
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is not None:
        return _PROCESSOR_CLASS
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Processor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2Processor

    class NeverSampleVisionTokens(V1Processor, V2Processor):
        def __init__(self, vllm_config, device_or_states, is_pin_memory: bool = False):
            device = getattr(device_or_states, "device", device_or_states)  # V2 passes its request states
            holder = type("ConfigHolder", (), {"config": vllm_config.model_config.hf_config})
            self.ids = torch.tensor(never_sample_ids(holder), dtype=torch.long, device=device)

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update) -> None:
            pass

        def apply(self, logits: torch.Tensor, ctx=None) -> torch.Tensor:  # [n, V], every row
            if self.ids.numel():
                logits.index_fill_(-1, self.ids, float("-inf"))
            return logits

    _PROCESSOR_CLASS = NeverSampleVisionTokens
    return _PROCESSOR_CLASS


def collapse_placeholders(input_ids: torch.Tensor, image_token_id: int | None) -> list[int]:
    """Token ids with each run of image placeholders cut to one: the prompt form vLLM expands itself."""
    ids = input_ids.tolist()
    if image_token_id is None:
        return ids
    return [t for k, t in enumerate(ids) if t != image_token_id or k == 0 or ids[k - 1] != image_token_id]


def _sampling_params(vllm, settings: RolloutConfig, stop_ids: list[int], seed: int | None, greedy: bool):
    return vllm.SamplingParams(
        n=1,
        temperature=0.0 if greedy else settings.temperature,
        top_p=1.0 if greedy else settings.top_p,
        top_k=0 if greedy else settings.top_k,  # vLLM: 0 = off, as rollout.top_k
        seed=None if greedy else seed,
        max_tokens=settings.max_new_tokens,
        min_tokens=settings.min_new_tokens,
        stop_token_ids=list(stop_ids),
        ignore_eos=True,  # the model's eos stops a response only when it is one of stop_ids
        logprobs=0,  # just the sampled token's (processed) log-prob
        detokenize=False,
    )


def _response(prompt_index: int, completion, stop_ids: list[int]) -> Response:
    tokens = torch.tensor(list(completion.token_ids), dtype=torch.long)  # [R]
    logprobs = torch.tensor([step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids)],
                            dtype=torch.float32)  # [R]
    finished = len(tokens) > 0 and int(tokens[-1]) in stop_ids
    return Response(prompt_index, tokens, logprobs, finished)


@contextlib.contextmanager
def rng_preserved():
    """Keep the process's global random states (Python, NumPy, torch CPU and CUDA) as they were.

    In-process vLLM reseeds them when its engine starts (``seed``), and its CPU sampler draws
    from torch's global generator at every decode step even when each request has its own
    seed: without this, a resumed run's restored RNG would be overwritten and training's
    random stream would depend on how much was sampled.
    """
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


class VLLMEngine(RolloutEngine):
    """A colocated vLLM engine for run config ``cfg`` (one per training process)."""

    name = "vllm"

    def __init__(self, cfg, stop_ids: list[int], pad_id: int, accelerator=None):
        super().__init__(cfg.rollout, stop_ids, pad_id)
        self.sleep_level = 0 if on_cpu() else cfg.rollout.vllm.sleep_level
        self.bucket_bytes = cfg.rollout.vllm.sync_bucket_mib * 2**20
        self.asleep = False
        prepare(cfg.rollout.vllm.cpu_kv_cache_gib)
        self.vllm = import_vllm()
        inspect_models_in_process()
        kwargs = engine_kwargs(cfg, accelerator)
        if on_cpu():  # vLLM itself would start, then fail at the first generate
            check_cpu_model(kwargs["model"], kwargs["dtype"], cfg.model.trust_remote_code)
        start = time.perf_counter()
        try:
            with rng_preserved():
                self.llm = self.vllm.LLM(**kwargs)
        except Exception as e:  # vLLM's own message, with what to change where we know it
            raise RuntimeError(_explain_start_failure(e, kwargs)) from e
        self.start_seconds = time.perf_counter() - start
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.image_token_id = getattr(hf_config, "image_token_id", None)
        log.info("vLLM engine for %s started in %.1f s (%s, max_model_len %d%s)", kwargs["model"],
                 self.start_seconds, kwargs["dtype"], kwargs["max_model_len"],
                 ", one engine per rank" if "distributed_executor_backend" in kwargs else "")
        if on_cpu() and cfg.rollout.vllm.sleep_level > 0:
            log.info("vLLM on CPU: sleep()/wake() do nothing (sleep mode needs a GPU); "
                     "rollout.vllm.sleep_level ignored")

    # ------------------------------------------------------------------ sampling

    def _prompt(self, prompt: PromptInputs) -> dict:
        request = {"prompt_token_ids": collapse_placeholders(prompt.input_ids, self.image_token_id)}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images)}
        elif prompt.image_grid_thw is not None and len(prompt.image_grid_thw):
            raise ValueError("a prompt with image placeholders but no images: the vLLM engine processes the images "
                             "itself and needs PromptInputs.images (rlvr.batch.encode_prompt fills it)")
        return request

    def generate(self, prompts: list[PromptInputs], seeds: list[int] | None = None, *,
                 settings: RolloutConfig | None = None, greedy: bool = False) -> list[Response]:
        settings = settings or self.settings
        if seeds is None:
            seeds = [0] * len(prompts) if greedy else torch.randint(0, 2**62, (len(prompts),)).tolist()
        if len(seeds) != len(prompts):
            raise ValueError(f"generate got {len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
        requests, params, owners = [], [], []
        for i, prompt in enumerate(prompts):
            request = self._prompt(prompt)  # one dict shared by the G requests: one prefix, one image hash
            for j in range(settings.group_size):
                requests.append(request)
                params.append(_sampling_params(self.vllm, settings, self.stop_ids, mix_seed(seeds[i], j), greedy))
                owners.append(i)
        try:
            with rng_preserved():
                outputs = self.llm.generate(requests, params, use_tqdm=False)
        except RuntimeError as e:  # e.g. Qwen3.5's gated delta net on CPU: "Unexpected head dim size, 32"
            if on_cpu() and "head" in str(e).lower() and "dim" in str(e).lower():
                raise RuntimeError(f"{e}\n{_head_size_message(self.llm.llm_engine.model_config.model, None)}") from e
            raise
        responses = []
        for i, output in zip(owners, outputs):
            expected = len(prompts[i].input_ids)
            if len(output.prompt_token_ids) != expected:
                raise RuntimeError(
                    f"vLLM expanded prompt {i} to {len(output.prompt_token_ids)} tokens, the run's processor to "
                    f"{expected}: its images were resized differently (or a prompt's placeholders are not one run per "
                    "image), so every position would be off. Process prompts with the run's data.min_pixels/max_pixels "
                    "(rlvr.models.load_processor).")
            responses.append(_response(i, output.outputs[0], self.stop_ids))
        return responses

    # ------------------------------------------------------------------ weights and memory

    def sync_weights(self, model) -> SyncReport:
        if self.asleep:  # the weights must be in place before they are overwritten
            self.llm.wake_up(tags=["weights"])
        start = time.perf_counter()
        stats = WeightStats()
        # In vLLM's dtype: a bf16 engine gets bf16 even from fp32 master weights (half the bytes).
        weights = iter_weights(model, self.bucket_bytes, dtype=self.llm.llm_engine.model_config.dtype, stats=stats)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.collective_rpc(_reprocess_output_heads)
        # Prefixes and image features computed with the old weights must not be reused
        # (without the encoder-cache reset the next generate fails with "Encoder cache miss").
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        report = SyncReport(tensors=stats.tensors, bytes=stats.bytes, seconds=time.perf_counter() - start)
        log.info("weight sync: %d tensors, %.1f MiB in %.2f s", report.tensors, report.bytes / 2**20, report.seconds)
        return report

    def sleep(self) -> None:
        if self.sleep_level > 0 and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            import gc

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _reprocess_output_heads(worker) -> int:
    """Run on vLLM's worker after a reload: redo the output head's post-load processing.

    With tied embeddings no ``lm_head`` weight is loaded (it is the embedding's), so the reload
    reprocesses only the embedding; on CPU the head keeps the GEMM vLLM packed from the old
    weights at start (measured: log-probs off by 5 after a sync that changed the embeddings).
    On GPU this processing does nothing for an unquantized head.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    heads = [m for m in worker.model_runner.get_model().modules() if isinstance(m, ParallelLMHead)]
    for head in heads:
        head.quant_method.process_weights_after_loading(head)
    return len(heads)


def _text_config(model: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).get_text_config()


def has_linear_attention(model: str, trust_remote_code: bool = False) -> bool:
    """Whether the model has linear-attention (gated delta net) layers, as Qwen3.5 has."""
    return "linear_attention" in (getattr(_text_config(model, trust_remote_code), "layer_types", None) or [])


def check_cpu_model(model: str, dtype: str, trust_remote_code: bool = False) -> None:
    """Raise, with what to change, for a model vLLM's CPU kernels would start but not run (at the first generate)."""
    text = _text_config(model, trust_remote_code)
    head_size = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head_size not in CPU_HEAD_SIZES:
        raise ValueError(_head_size_message(model, head_size))
    if has_linear_attention(model, trust_remote_code) and dtype != "bfloat16":
        raise ValueError(f"{model} has linear-attention (gated delta net) layers, which vLLM runs on CPU in bf16 "
                         f"only; its dtype here is {dtype}. Set model.dtype=bfloat16 (or use rollout.engine=hf).")


def _head_size_message(model: str, head_size: int | None) -> str:
    which = f"head size {head_size}" if head_size is not None else "a head size"
    return (f"{model} has {which} that vLLM's CPU kernels do not run: its attention takes head sizes "
            f"{', '.join(map(str, CPU_HEAD_SIZES))} (head_dim, or hidden_size / num_attention_heads), and Qwen3.5's "
            "gated delta net rejects 32 (64 works). On CPU use a model with one of those (a tiny model: "
            "python -m rlvr.devtools.make_tiny_model --hidden-size 128, or 256 for qwen3_5), or rollout.engine=hf.")


def _explain_start_failure(error: Exception, kwargs: dict) -> str:
    text = f"vLLM could not start an engine for {kwargs['model']}: {type(error).__name__}: {error}"
    lowered = str(error).lower()
    if on_cpu() and "head" in lowered and "size" in lowered:
        text += "\n" + _head_size_message(kwargs["model"], None)
    return text
