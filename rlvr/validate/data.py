"""The data section of the report: every row through training's own row check (``rlvr.data.check_row``), counted."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field

from rlvr.validate.report import FAIL, INFO, OK, WARN, Report, _brief


@dataclass
class DataStats:
    rows: int = 0
    usable: int = 0
    reasons: dict[str, list[str]] = field(default_factory=dict)  # reason -> messages
    tokens: list[tuple[int, str]] = field(default_factory=list)  # (prompt tokens, id) of usable rows
    limited: bool = False

    @property
    def skipped(self) -> int:
        return sum(len(v) for v in self.reasons.values())


def scan_data(path: str, cfg, processor, max_rows: int | None) -> DataStats:
    """Every row of one data source through training's row checks (``rlvr.data``), counted.

    Raises ``rlvr.data.DataError`` when the source itself cannot be read."""
    from rlvr.data import RowError, check_row, read_rows

    stats = DataStats()
    base_dir = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
    limits = [x for x in (max_rows, cfg.data.max_rows) if x is not None]
    limit = min(limits) if limits else math.inf
    for loc, row in read_rows(path, cfg.data.format):
        if stats.rows >= limit:
            stats.limited = max_rows is not None and (cfg.data.max_rows is None or max_rows < cfg.data.max_rows)
            break
        stats.rows += 1
        try:
            example = check_row(loc, row, cfg.data, processor, base_dir)
        except RowError as e:
            stats.reasons.setdefault(e.reason, []).append(str(e))
            continue
        except Exception as e:  # noqa: BLE001 - an unexpected failure on one row is still that row's problem
            stats.reasons.setdefault("unexpected_error", []).append(f"{loc}: {_brief(e)}")
            continue
        stats.usable += 1
        if processor is not None:
            stats.tokens.append((example.prompt_tokens, example.id))
    return stats


def check_data(cfg, processor, report: Report, max_rows: int | None = None, allow_skipped: float = 0.0) -> None:
    from rlvr.data import DataError

    section = "Data"
    sources = [("train", f) for f in cfg.data.train_files] + [("val", f) for f in cfg.data.val_files]
    if not cfg.data.val_files:
        report.add(section, INFO, "data.val_files is empty: no evaluation (eval/ metrics) will run.")
    if processor is None and sources:
        report.add(section, WARN, "no processor: checked JSON, questions, golds and image files only; image decoding "
                                  "and prompt token counts need the processor (see above).")
    usable_train = 0
    for split, path in sources:
        try:
            stats = scan_data(path, cfg, processor, max_rows)
        except (DataError, OSError) as e:
            report.add(section, FAIL, f"{split} {path}: {_brief(e)}")
            continue
        except Exception as e:  # noqa: BLE001 - e.g. a parquet file that is not parquet
            report.add(section, FAIL, f"{split} {path}: cannot read it: {_brief(e)}")
            continue
        if split == "train":
            usable_train += stats.usable
        head = f"{split} {path}: {stats.rows} rows{' (checked the first ' + str(stats.rows) + ')' if stats.limited else ''}, " \
               f"{stats.usable} usable"
        if stats.rows == 0:
            report.add(section, FAIL, f"{split} {path}: no rows at all.")
            continue
        if stats.skipped:
            counts = ", ".join(f"{len(v)} {r}" for r, v in sorted(stats.reasons.items(), key=lambda kv: -len(kv[1])))
            share = stats.skipped / stats.rows
            lines = [f"{head}, {stats.skipped} skipped ({share:.1%}): {counts}"]
            for reason, messages in sorted(stats.reasons.items()):
                lines += [f"{reason}: {m}" for m in messages[:3]]
                if len(messages) > 3:
                    lines.append(f"{reason}: ... and {len(messages) - 3} more")
            if stats.usable == 0:
                status, advice = FAIL, "No usable rows: training would stop."
            elif cfg.data.strict:
                status, advice = FAIL, "data.strict=true: training would stop at the first of them."
            elif share > allow_skipped:
                status, advice = FAIL, (f"Training would skip them; fix the rows, or accept up to a share with "
                                        f"--allow-skipped {math.ceil(share * 100) / 100:g}.")
            else:
                status, advice = WARN, "Training will skip them."
            report.add(section, status, "\n".join([lines[0] + ". " + advice] + lines[1:]))
        else:
            report.add(section, OK, f"{head}, none skipped; every gold parses as a number")
        if "bad_gold" in stats.reasons:
            report.add(section, WARN,
                       f"{split} {path}: {len(stats.reasons['bad_gold'])} gold answer(s) do not parse as a number "
                       "(see bad_gold above); such rows can never be rewarded and are skipped.")
        if stats.tokens:
            values = sorted(t for t, _ in stats.tokens)
            p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
            biggest = max(stats.tokens)
            budget = cfg.data.max_prompt_tokens
            report.add(section, OK if biggest[0] <= budget else FAIL,
                       f"{split} prompt tokens (image + text): min {values[0]}, median {int(statistics.median(values))}, "
                       f"p95 {p95}, max {biggest[0]} (id {biggest[1]}) against data.max_prompt_tokens={budget}")
    if cfg.data.train_files and 0 < usable_train < cfg.trainer.prompts_per_step:
        report.add(section, WARN, f"only {usable_train} usable training rows for trainer.prompts_per_step="
                                  f"{cfg.trainer.prompts_per_step}: every step repeats prompts.")
