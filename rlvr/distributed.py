"""Running on many processes: the accelerator, DeepSpeed settings, generation under ZeRO-3, stop signals.

- ``make_accelerator``: the process group gets ``trainer.collective_timeout_s``, so a rank
  that died or hangs makes the others fail with an error instead of waiting forever. On a
  machine without GPUs it uses gloo: DeepSpeed over gloo, and plain data parallelism as
  accelerate's MULTI_CPU (``accelerate launch`` alone would quietly run unsynchronised
  single processes).
- ``configure_deepspeed``: the DeepSpeed values that rlvr's config owns (micro-batch,
  accumulation, clipping) are written into the DeepSpeed config before ``prepare``, so the
  accelerate config file only chooses the ZeRO stage and offloading.
- ``generation_model``: under ZeRO-3 each rank holds a slice of every weight. Generating
  through that gathers every layer again for every token, which is many times slower than
  the update. With ``rollout.zero3_gather_weights`` (default) the full weights are gathered
  once for the whole rollout and DeepSpeed's per-module hooks are lifted meanwhile; the
  price is the model's full 16-bit size on every GPU during generation.
- ``StopSignal``: SIGUSR1 (SLURM's warning before the time limit), SIGTERM and a first
  SIGINT (Ctrl-C) set a flag; the trainer checks it at step boundaries (``StopSignal.agree``),
  checkpoints and exits. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from datetime import timedelta

import torch

logger = logging.getLogger(__name__)


def launched_distributed() -> bool:
    """True inside a process started by torchrun / accelerate launch."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(timeout_s: int, mixed_precision: str = "no"):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    no_gpu = not torch.cuda.is_available()
    # DeepSpeed without a GPU: accelerate picks no backend by itself and each process would
    # believe it is alone. Data parallelism without a GPU: accelerate's MULTI_CPU mode.
    backend = "gloo" if no_gpu and deepspeed and launched_distributed() else None
    cpu = no_gpu and not deepspeed and launched_distributed()
    pg = InitProcessGroupKwargs(backend=backend, timeout=timedelta(seconds=timeout_s))
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=[pg])


def is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def zero_stage(accelerator) -> int:
    if not is_deepspeed(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def configure_deepspeed(accelerator, micro_batch_size: int, accumulation_steps: int, max_grad_norm: float,
                        hidden_size: int) -> None:
    """Write rlvr's own values into the DeepSpeed config (call before ``prepare``).

    A DeepSpeed config file that sets them to other numbers is overruled, with a warning:
    they follow from ``trainer.*`` and the loss normalisation depends on them.
    """
    if not is_deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ours = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps,
        "train_batch_size": micro_batch_size * accumulation_steps * accelerator.num_processes,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in ours.items():
        if ds.get(key, "auto") not in ("auto", value):
            logger.warning("DeepSpeed config sets %s=%s; rlvr uses %s (from trainer.*)", key, ds[key], value)
        ds[key] = value
    zero = ds.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:
        # the final model is written from gathered 16-bit weights (accelerator.get_state_dict)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    sizes = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value


@contextlib.contextmanager
def generation_model(accelerator, prepared, gather: bool = True):
    """Yield ``(module, synced_gpus)`` for generating with the prepared model's inner module.

    The precision is the training forward's: the accelerator's autocast without DeepSpeed
    (DeepSpeed holds the 16-bit weights themselves).

    Under ZeRO-3 with ``gather``: full weights on every rank, DeepSpeed hooks lifted, no
    per-token synchronisation between ranks. Under ZeRO-3 without: partitioned weights,
    and ``synced_gpus=True`` keeps every rank stepping until all are done, because each
    forward is a collective. Otherwise the module as is.
    """
    module = accelerator.unwrap_model(prepared)
    if not is_deepspeed(accelerator) and accelerator.mixed_precision != "no":
        # Without DeepSpeed the weights stay fp32 and the training forward runs under the
        # accelerator's autocast (accelerate wraps the prepared model's forward); generate
        # on the unwrapped module must run under the same autocast, or the policy that
        # samples is not the one whose log-probs the update computes.
        with accelerator.autocast():
            yield module, None
        return
    if zero_stage(accelerator) != 3:
        yield module, None
        return
    if not gather:
        yield module, accelerator.num_processes > 1
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    with unwrap_model_for_generation(prepared):
        yield module, False


def prepare_reference(accelerator, model):
    """A frozen reference model for the KL penalty, placed like the policy.

    Under ZeRO-3 it is partitioned across ranks too (a DeepSpeed engine without optimizer),
    so the reference costs 1/world of its size per GPU; otherwise a full copy per rank.
    """
    model = model.requires_grad_(False).eval()
    if zero_stage(accelerator) != 3:
        return model.to(accelerator.device)
    import copy

    import deepspeed

    ds = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    ds["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine


def shutdown_distributed() -> None:
    """Destroy the process group, if any, before the interpreter exits.

    Left to interpreter teardown, gloo's threads are sometimes destroyed while joinable and
    the process aborts ("terminate called without an active exception", exit -6) after the
    work is done, which fails a finished run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# Every reduction over ranks goes through these: each is one collective on every rank, and
# a no-op in a single process (no process group needed).


def world_size() -> int:
    """Processes in the default process group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def reduce_over_ranks(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced element-wise over ranks (``op``: sum, max or min), in place, on every rank."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return tensor


def max_over_ranks(accelerator, value: int | list[int]) -> int | list[int]:
    """The largest ``value`` of any rank (element-wise for a list), on every rank."""
    values = value if isinstance(value, list) else [value]
    out = reduce_over_ranks(torch.tensor(values, dtype=torch.long, device=accelerator.device), "max").tolist()
    return out if isinstance(value, list) else out[0]


def average_over_ranks(metrics: dict[str, float], device) -> dict[str, float]:
    """Each metric's mean over ranks (the maximum for ``*/max`` keys); every rank must pass the same keys."""
    if world_size() == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)  # [K]
    maxes = reduce_over_ranks(values.clone(), "max")
    means = reduce_over_ranks(values, "sum") / world_size()
    return {k: (maxes[i] if k.endswith("/max") else means[i]).item() for i, k in enumerate(keys)}


def all_ranks_agree(flag: bool, device) -> bool:
    """Whether ``flag`` holds on every rank."""
    return bool(reduce_over_ranks(torch.tensor(int(flag), device=device), "min").item())


def gather_objects(accelerator, obj) -> list:
    """``obj`` from every rank, in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return [obj]
    out: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def describe_ranks(accelerator) -> str:
    """One line naming every rank's host and SLURM node (a collective)."""
    me = (accelerator.process_index, socket.gethostname(), os.environ.get("SLURMD_NODENAME", "-"),
          accelerator.local_process_index)
    everyone = gather_objects(accelerator, me)
    ranks = ", ".join(f"rank {r} on {host} (node {node}, local rank {local})" for r, host, node, local in everyone)
    return f"process group of {accelerator.num_processes}: {ranks}"


def is_collective_failure(error: BaseException) -> bool:
    """In a multi-process run, does this exception come from a collective that timed out or lost a peer?"""
    if not launched_distributed():
        return False
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(error).lower()
    return isinstance(error, dist_error) or any(
        s in text for s in ("timed out", "timeout", "connection closed by peer", "connection reset by peer",
                            "broken pipe", "nccl error", "gloo"))


# ------------------------------------------------------------------ stop signals


class StopSignal:
    """Remembers SIGUSR1 / SIGTERM / SIGINT so the trainer can stop at the next step boundary.

    The handler only sets a flag: a checkpoint needs every rank at the same point, which
    only the training loop knows. ``received`` names the first signal (e.g. "SIGUSR1").
    Ctrl-C is the first SIGINT: treated like SIGTERM (checkpoint, then stop); a second SIGINT
    means "now": the process exits at once with 128 + SIGINT, without a checkpoint (the last
    complete one stays; checkpoints are written atomically).

    Under ``accelerate launch`` (torchrun) a terminal's Ctrl-C reaches every rank and the
    launcher, which forwards its own SIGINT to the ranks at once: a SIGINT within
    ``SAME_CTRL_C_S`` of the first is that echo, not a second Ctrl-C. The launcher then gives
    its workers 30 s before it kills them (torch's fixed shutdown timeout), so a step plus
    checkpoint longer than that ends without the new checkpoint (the previous one stays); for
    long steps signal the training processes themselves (SIGTERM/SIGUSR1; SLURM: --signal).
    """

    SAME_CTRL_C_S = 1.0

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    # ranks agree on the largest: SIGUSR1 wins (requeue), then SIGTERM, then SIGINT
    CODES = {None: 0, "SIGINT": 1, "SIGTERM": 2, "SIGUSR1": 3}

    def __init__(self):
        self.received: str | None = None
        self._first_at = 0.0  # time.monotonic() of the first signal
        self._previous: dict[int, object] = {}

    def agree(self, accelerator) -> str | None:
        """The signal to act on at this step boundary, the same on every rank (a collective)."""
        if accelerator.num_processes == 1:
            return self.received
        code = max_over_ranks(accelerator, self.CODES[self.received])
        return {v: k for k, v in self.CODES.items()}[code]

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self._first_at = name, time.monotonic()
            again = "; press Ctrl-C again to abort without one" if name == "SIGINT" else ""
            os.write(2, f"rlvr: got {name}; will checkpoint at the end of this step and stop{again}\n".encode())
        elif name == "SIGINT" and time.monotonic() - self._first_at > self.SAME_CTRL_C_S:
            os.write(2, b"rlvr: second SIGINT; aborting now, without a checkpoint (the newest complete one stays; "
                        b"continue with the same command and resume=auto)\n")
            os._exit(128 + signal.SIGINT)

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def report_stop(reason: str) -> None:
    """Tell the launcher why training stopped: write ``reason`` to ``$RLVR_STOP_FILE`` if set.

    launch/slurm/train.sbatch sets it, and requeues the job after a SIGUSR1 stop once every
    process has exited.
    """
    path = os.environ.get("RLVR_STOP_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(reason + "\n")
