"""``python -m rlvr.synth.hopchain``: HopChain's four stages from a folder of images to training JSONL.

    python -m rlvr.synth.hopchain --config recipes/synth/demo.yaml --images DIR --out DIR \\
        [--shard i/N] [key=value ...]
    python -m rlvr.synth.hopchain merge --out DIR SHARD_DIR [SHARD_DIR ...]
    python -m rlvr.synth.hopchain render --out DIR [--n 32] [--seed 0]   # the demo's synthetic scenes

A run writes OUT/config.yaml (the resolved config), OUT/stages/<stage>/<image id>.json per image
(a rerun resumes), and, unsharded, OUT/train*.jsonl, OUT/page.html, OUT/report.{txt,json}.
A shard (``--shard i/N``, 0-based: every N-th image of the sorted list from the i-th) writes
only its stage files and report; ``merge`` combines shards and writes the data and page once.
Exit codes: 0 done, 2 a problem with the input (one message says what to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time

from rlvr.synth.config import ClientConfig, SynthConfig
from rlvr.synth.pipeline import SynthError, final_queries, final_records, list_images, parse_shard, run, totals

log = logging.getLogger("rlvr.synth")


def load_config(path: str | None, overrides: list[str]) -> SynthConfig:
    """The recipe plus overrides, checked; every problem in one SynthError."""
    from rlvr.config.loader import load
    from rlvr.config.problems import ConfigError

    try:
        cfg = load(SynthConfig, path, overrides)
    except ConfigError as e:
        raise SynthError(str(e)) from None
    problems = cfg.problems()
    if problems:
        raise SynthError("the config has problems:\n  - " + "\n  - ".join(problems))
    return cfg


def finish(out_dir: str, cfg: SynthConfig, images_dir: str, seconds: float | None = None) -> dict:
    """Write the JSONL (and its variants), the page and the report from the stage files; the paths."""
    from rlvr.synth import output

    queries, records = final_queries(out_dir), final_records(out_dir)
    data = output.write_dataset(queries, out_dir, images_dir, records=records)
    if not cfg.output.variants:
        for variant in [v for v in data if v != "chain"]:
            os.remove(data.pop(variant))
    paths = {"data": data}
    if cfg.output.page_samples:
        paths["page"] = output.write_page(queries, records, os.path.join(out_dir, "page.html"),
                                          n=cfg.output.page_samples, images_root=images_dir)
    paths.update(write_report(out_dir, queries, seconds))
    return paths


def write_report(out_dir: str, queries: list | None = None, seconds: float | None = None) -> dict:
    """report.json and report.txt: counts per stage and reason, hop-count and answer histograms."""
    from rlvr.files import atomic_write
    from rlvr.synth import output

    queries = final_queries(out_dir) if queries is None else queries
    counts = totals(out_dir)
    text, summary = output.report({"stages": counts}, queries)
    summary["stages"] = counts  # with each stage's unit (images / queries) and its input count
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
        text += f"run time: {seconds:.1f} s (this run; resumed stages not included)\n"
    paths = {"report": os.path.join(out_dir, "report.txt"), "report_json": os.path.join(out_dir, "report.json")}
    atomic_write(paths["report_json"], json.dumps(summary, indent=1))
    atomic_write(paths["report"], text)
    return paths


def merge_stages(out_dir: str, shard_dirs: list[str]) -> tuple[SynthConfig, str]:
    """Copy the shards' stage files, crops and config into ``out_dir``; (config, images folder)."""
    from rlvr.config.loader import load, save
    from rlvr.files import atomic_write

    runs = []
    for d in shard_dirs:
        try:
            with open(os.path.join(d, "run.json"), encoding="utf-8") as f:
                runs.append(json.load(f))
        except (OSError, ValueError):
            raise SynthError(f"merge: {d} is not a shard run (no readable run.json); "
                             "pass the --out folders of the shard runs.") from None
    roots = {r["images_dir"] for r in runs}
    if len(roots) != 1:
        raise SynthError(f"merge: the shards ran on different --images folders ({', '.join(sorted(roots))}).")
    for d in shard_dirs:
        for sub in ("stages", "crops"):
            if os.path.isdir(os.path.join(d, sub)):
                shutil.copytree(os.path.join(d, sub), os.path.join(out_dir, sub), dirs_exist_ok=True)
    cfg = load(SynthConfig, os.path.join(shard_dirs[0], "config.yaml"))
    save(cfg, os.path.join(out_dir, "config.yaml"))
    images_dir = roots.pop()
    atomic_write(os.path.join(out_dir, "run.json"),
                 json.dumps({"images_dir": images_dir, "merged": [os.path.abspath(d) for d in shard_dirs]}))
    return cfg, images_dir


def merge(out_dir: str, shard_dirs: list[str]) -> dict:
    """Merge shard runs, then write the data, page and report once; the paths written."""
    cfg, images_dir = merge_stages(out_dir, shard_dirs)
    return finish(out_dir, cfg, images_dir)


def synthesize(cfg: SynthConfig, images_dir: str, out_dir: str, shard: tuple[int, int] = (0, 1),
               progress: bool = True) -> dict:
    """Build the backends, run the stages (resuming), then the outputs (only the report for a shard)."""
    from rlvr.config.loader import save
    from rlvr.synth.backends import build_backends

    start = time.time()
    list_images(images_dir)  # a missing folder or no images: say so before writing anything
    os.makedirs(out_dir, exist_ok=True)
    save(cfg, os.path.join(out_dir, "config.yaml"))
    processed = run(images_dir, out_dir, build_backends(cfg, images_dir, out_dir), shard, progress)
    log.info("processed per stage (0 = resumed from the stage files): %s", processed)
    if shard[1] > 1:
        return write_report(out_dir, seconds=time.time() - start)
    return finish(out_dir, cfg, images_dir, time.time() - start)


def _render(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rlvr.synth.hopchain render",
                                description="Render synthetic scenes with known contents (and their COCO JSON).")
    p.add_argument("--out", required=True, help="folder for the images and annotations")
    p.add_argument("--n", type=int, default=32, help="number of scenes (default 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n {args.n}: must be >= 1")
    from rlvr.synth.scenes import render_scenes

    scenes = render_scenes(args.out, args.n, args.seed)
    print(f"rendered {len(scenes)} scenes into {args.out}")
    return 0


def _merge(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rlvr.synth.hopchain merge",
                                description="Merge shard runs: stage files, crops, counts; then data, page, report.")
    p.add_argument("--out", required=True, help="the merged run's folder")
    p.add_argument("shards", nargs="+", help="the shards' --out folders")
    args = p.parse_args(argv)
    _print_paths(merge(args.out, args.shards))
    return 0


def help_config() -> str:
    """Every key of SynthConfig with its default and the comment beside its field."""
    import dataclasses
    import typing

    from rlvr.config.help import field_help

    lines = []

    def walk(cls: type, prefix: str) -> None:
        helps, hints, default = field_help(cls), typing.get_type_hints(cls), cls()
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"\n{prefix}{f.name}:")
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {json.dumps(value)}  # {helps.get(f.name, '')}")
    walk(SynthConfig, "")
    lines.append("\nclients: a list; each entry has")
    helps, default = field_help(ClientConfig), ClientConfig()
    lines += [f"  {f.name} = {json.dumps(getattr(default, f.name))}  # {helps.get(f.name, '')}"
              for f in dataclasses.fields(ClientConfig)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _print_paths(paths: dict) -> None:
    for name, path in paths.items():
        shown = ", ".join(path.values()) if isinstance(path, dict) else ", ".join(path) \
            if isinstance(path, (list, tuple)) else path
        print(f"{name}: {shown}")


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rlvr.synth.hopchain",
                                description="HopChain's four stages from a folder of images to training JSONL.",
                                epilog="Every config key: --help-config. Subcommands: merge --out DIR SHARD_DIR... "
                                       "(after --shard runs); render --out DIR --n 32 (the demo's scenes).")
    p.add_argument("--config", help="synthesis recipe YAML (recipes/synth/)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder; a rerun into it resumes")
    p.add_argument("--shard", default="0/1", help="i/N: this run takes every N-th image from the i-th (0-based)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. queries.per_image=8")
    args = p.parse_intermixed_args(argv)
    shard = parse_shard(args.shard)
    cfg = load_config(args.config, args.overrides)
    paths = synthesize(cfg, args.images, args.out, shard, progress=not args.no_progress)
    _print_paths(paths)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "--help-config" in argv:
        print(help_config(), end="")
        return 0
    command = {"merge": _merge, "render": _render}.get(argv[0] if argv else "", _run)
    try:
        return command(argv[1:] if command is not _run else argv)
    except SynthError as e:
        print(f"hopchain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
