"""The validate report: checks grouped by section, rendered for a terminal."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

OK, INFO, WARN, FAIL = "ok", "info", "warn", "FAIL"
GIB = 1024**3


@dataclass
class Check:
    section: str
    status: str  # OK, INFO, WARN or FAIL
    message: str


@dataclass
class Report:
    """Checks in the order they ran, grouped by section when rendered."""

    title: str = "rlvr validate"
    checks: list[Check] = field(default_factory=list)

    def add(self, section: str, status: str, message: str) -> None:
        self.checks.append(Check(section, status, message))

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def render(self, width: int = 100) -> str:
        lines = [self.title, ""]
        sections: dict[str, list[Check]] = {}
        for c in self.checks:
            sections.setdefault(c.section, []).append(c)
        for section, checks in sections.items():
            lines.append(section)
            for c in checks:
                first, *rest = c.message.split("\n")
                # never break inside a flag, a key or a path (--allow-skipped, data/x-y.jsonl)
                keep = {"break_on_hyphens": False, "break_long_words": False}
                wrapped = textwrap.wrap(first, width - 8, **keep) or [""]
                for extra in rest:
                    wrapped += textwrap.wrap(extra, width - 10, initial_indent="  ", subsequent_indent="    ",
                                             **keep) or [""]
                lines.append(f"  {c.status:<5} {wrapped[0]}")
                lines.extend(f"        {w}" for w in wrapped[1:])
            lines.append("")
        n_fail = len(self.problems)
        n_warn = sum(c.status == WARN for c in self.checks)
        if n_fail:
            lines.append(f"{n_fail} problem{'s' * (n_fail > 1)}, {n_warn} warning{'s' * (n_warn != 1)}: "
                         "fix the FAIL lines above before launching.")
        else:
            lines.append(f"No problems found ({n_warn} warning{'s' * (n_warn != 1)}).")
        return "\n".join(lines)


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _gib(x: float) -> str:
    return f"{x:.2f} GiB" if x >= 0.1 else f"{x * 1024:.1f} MiB"


def _brief(e: BaseException, limit: int = 600) -> str:
    text = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) or not str(e) else str(e)
    return text if len(text) <= limit else text[:limit] + " ..."
