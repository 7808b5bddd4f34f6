"""Peak memory and time of chosen-token log-probs with backward, rlvr's chunked Function against naive.

    .venv/bin/python benchmarks/logprob_memory.py [--batch 2] [--seq 2048] [--hidden 2048] [--vocab 151936]
        [--chunk-rows 1024] [--old-chunk 512] [--repeats 3] [--threads 2] [--methods naive,rlvr,checkpoint] [--quick]

The work: from hidden states [B, T, H] and an output projection [V, H] (fp32, both requiring
grad), the log-prob of one target token per position, then ``logprobs.sum().backward()`` down
to hidden and weight. Defaults are Qwen2.5-VL-3B's head (H = 2048, V = 151936) over two
2048-token responses. Methods:

- naive: ``log_softmax((hidden @ W.T).float(), -1).gather(...)``, the full [B, T, V] logits;
- rlvr: ``rlvr.logprobs.selective_logprobs`` (the custom autograd Function), ``--chunk-rows`` rows per chunk;
- checkpoint: rlvr's previous path (still the fallback for ZeRO-3 and wrapped heads),
  ``head(hidden)`` + log-softmax per chunk of ``--old-chunk`` positions under activation checkpointing.

Each method runs in a fresh subprocess (this script with ``--method``), so one method's freed
memory cannot hide another's peak. Memory: ``ru_maxrss`` (the process's resident high-water
mark) after the work minus ``ru_maxrss`` right after allocating the inputs; it includes the
gradients the backward returns ([V, H] for the weight), which every method pays. Time: median
of ``--repeats`` runs after one warm-up. CPU only; ``--threads`` sets torch's intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
METHODS = ("naive", "rlvr", "checkpoint")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_method(args) -> dict:
    """One method in this process: allocate inputs, warm up, time ``repeats`` runs, report the peak."""
    import torch

    sys.path.insert(0, str(ROOT))
    from rlvr.logprobs import _checkpointed_logprobs, selective_logprobs

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.seq, args.hidden, generator=g).requires_grad_()  # [B, T, H]
    # Scaled in place: a temporary [V, H] would raise the high-water mark the baseline reads.
    weight = torch.randn(args.vocab, args.hidden, generator=g).div_(args.hidden ** 0.5).requires_grad_()  # [V, H]
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)  # [B, T]
    # Built on the meta device so no throwaway [V, H] init raises the baseline; its weight
    # shares ``weight``'s storage.
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device="meta")
    head.weight = torch.nn.Parameter(weight.detach(), requires_grad=True)
    baseline = _maxrss_bytes()

    def work():
        if args.method == "naive":
            logits = (hidden @ weight.T).float()  # [B, T, V]
            lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T]
            del logits
            lp.sum().backward()
        elif args.method == "rlvr":
            lp, _ = selective_logprobs(hidden, weight, targets, 1.0, args.chunk_rows)  # [B, T]
            lp.sum().backward()
        else:
            lp, _ = _checkpointed_logprobs(head, hidden, targets, 1.0, args.old_chunk)  # [B, T]
            lp.sum().backward()
        # Drop the gradients so every repeat allocates (and counts) them afresh.
        hidden.grad = weight.grad = head.weight.grad = None
        return float(lp.detach().sum())

    check = work()  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return {"method": args.method, "baseline_bytes": baseline, "peak_extra_bytes": _maxrss_bytes() - baseline,
            "median_s": statistics.median(times), "times": times, "check": check}


def _child_args(args, method: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--method", method,
            "--batch", str(args.batch), "--seq", str(args.seq), "--hidden", str(args.hidden),
            "--vocab", str(args.vocab), "--chunk-rows", str(args.chunk_rows), "--old-chunk", str(args.old_chunk),
            "--repeats", str(args.repeats), "--threads", str(args.threads)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048, help="positions per sequence (T)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per chunk for rlvr (default: rlvr.logprobs.DEFAULT_CHUNK_ROWS)")
    parser.add_argument("--old-chunk", type=int, default=512,
                        help="positions per sequence per chunk for the checkpoint path (trainer.logprob_chunk_size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (seconds)")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.hidden, args.vocab = 2, 256, 256, 8192
        args.old_chunk = min(args.old_chunk, 64)
        if args.chunk_rows is None:
            args.chunk_rows = 128
    if args.chunk_rows is None:
        sys.path.insert(0, str(ROOT))
        from rlvr.logprobs import DEFAULT_CHUNK_ROWS

        args.chunk_rows = DEFAULT_CHUNK_ROWS
    if args.method:
        print(json.dumps(_run_method(args)))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    b, t, h, v = args.batch, args.seq, args.hidden, args.vocab
    print(f"B={b} T={t} H={h} V={v} fp32, threads={args.threads}, repeats={args.repeats}; "
          f"rlvr chunk={args.chunk_rows} rows, "
          f"checkpoint chunk={args.old_chunk} positions x B={args.old_chunk * b} rows")
    print(f"inputs: hidden {b * t * h * 4 / MIB:.0f} MiB, weight {v * h * 4 / MIB:.0f} MiB; "
          f"full logits [B, T, V] fp32 {b * t * v * 4 / MIB:.0f} MiB; weight grad {v * h * 4 / MIB:.0f} MiB")
    results = {}
    for method in methods:
        proc = subprocess.run(_child_args(args, method), check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{method}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results.get("naive")
    print(f"\n{'method':<11} {'baseline MiB':>12} {'peak extra MiB':>15} {'median s':>9} {'peak / naive':>13} "
          f"{'time / naive':>13}")
    for method, r in results.items():
        peak, secs = r["peak_extra_bytes"] / MIB, r["median_s"]
        ratio_peak = f"{r['peak_extra_bytes'] / ref['peak_extra_bytes']:.1%}" if ref else "-"
        ratio_time = f"{secs / ref['median_s']:.2f}x" if ref else "-"
        print(f"{method:<11} {r['baseline_bytes'] / MIB:>12.0f} {peak:>15.0f} {secs:>9.2f} {ratio_peak:>13} "
              f"{ratio_time:>13}")
    checks = {m: r["check"] for m, r in results.items()}
    print(f"\nsum of log-probs per method (should agree): {checks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
