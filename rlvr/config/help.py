"""``launch/train.py --help-config``: every section and key with its default and its help, from the dataclasses.

The comments next to the fields in ``rlvr.config.schema`` are the one source of the help text.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re

import yaml

from rlvr.config.loader import _hints, _join, all_keys  # noqa: F401 (_join: tests walk sections with it)
from rlvr.config.schema import Config, ConfigError


def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in ``rlvr.config.schema``: the comment lines just above it and its trailing comment.

    The comments next to the dataclass fields are the one source of the keys' help text
    (``launch/train.py --help-config``); a test checks that every key has one.
    """
    import inspect
    import io
    import tokenize

    lines, _ = inspect.getsourcelines(cls)
    comments: dict[int, str] = {}  # line index -> comment text
    whole_line: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0] - 1
            comments[row] = tok.string.lstrip("#").strip()
            if not lines[row][: tok.start[1]].strip():
                whole_line.add(row)
    starts = {}  # field name -> first line index
    for i, line in enumerate(lines):
        m = re.match(r"    (\w+)\s*:", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            starts[m.group(1)] = i
    order = sorted(starts.items(), key=lambda kv: kv[1])
    methods = [i for i, line in enumerate(lines) if re.match(r"    (def |@)", line)]  # the section's rules
    out = {}
    for k, (name, first) in enumerate(order):
        end = order[k + 1][1] if k + 1 < len(order) else min([i for i in methods if i > first] or [len(lines)])
        above, j = [], first - 1
        while j >= 0 and j in whole_line:
            above.insert(0, comments[j])
            j -= 1
        trailing = [comments[i] for i in range(first, end) if i in comments and i not in whole_line]
        out[name] = " ".join(above + trailing)
    return out


def _sections() -> dict[str, type]:
    """'' (top-level keys) and every section's dotted name -> its dataclass."""
    out: dict[str, type] = {"": Config}

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                out[_join(prefix, f.name)] = tp
                walk(tp, _join(prefix, f.name))

    walk(Config, "")
    return out


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [dataclasses.asdict(v) for v in value]
    else:
        return "(required)"
    if value is None or isinstance(value, bool):
        text = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value if value.strip() and value.isprintable() else json.dumps(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text if len(text) <= 70 else text[:67] + "..."


def help_config(section: str | None = None, width: int = 100) -> str:
    """Keys with their defaults and help, for ``launch/train.py --help-config [section]``.

    ``section`` is a section ('trainer', 'model.lora') or a key ('trainer.lr'); None = all.
    Raises ConfigError for a name that is neither.
    """
    import textwrap

    sections = _sections()
    keys = all_keys(Config)
    if section is not None and section not in sections and section not in keys:
        near = difflib.get_close_matches(section, [s for s in sections if s] + keys, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"--help-config: no section or key {section!r}.{hint} Sections: "
                          f"{', '.join(s for s in sections if s)}.")
    out = []
    for name, cls in sections.items():
        if section is not None and not (name == section or name.startswith(section + ".")
                                        or section.rsplit(".", 1)[0] == name and section in keys):
            continue
        helps, rows = field_help(cls), []
        for f in dataclasses.fields(cls):
            key = _join(name, f.name)
            if dataclasses.is_dataclass(_hints(cls)[f.name]):
                continue
            if section is not None and section in keys and key != section:
                continue
            rows.append((f"{key} = {_default_text(f)}", helps.get(f.name, "")))
        if not rows:
            continue
        out.append(f"{name or 'top level'}:")
        for left, text in rows:
            out.append(f"  {left}")
            out += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ",
                                 break_on_hyphens=False, break_long_words=False)
        out.append("")
    out.append("Set any key in a recipe YAML or on the command line, e.g. trainer.lr=1e-6.")
    return "\n".join(out)
