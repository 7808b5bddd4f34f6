"""Files the run writes and reads: atomic replacement, and JSON lines read one line at a time.

A file someone may be reading (a page in a browser, a plot in a viewer, metrics a dashboard
polls, a checkpoint's state) is written to a temporary name beside it and renamed over it,
so a reader sees the old file or the new one, never half of one. JSON lines are read line
by line, so one bad line (bad JSON, bytes that are not UTF-8, a line cut by a kill) is
reported with its line number and the caller decides: skip it, stop there, or refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "", fsync: bool = False) -> Iterator[str]:
    """A temporary path beside ``path`` to write; renamed over ``path`` when the block succeeds.

    ``suffix`` keeps an extension some writers need (matplotlib picks the format from it);
    ``fsync`` forces the bytes to disk before the rename (checkpoint state). On an exception
    the temporary file is removed and ``path`` is left as it was.
    """
    tmp = f"{path}.tmp-{os.getpid()}{suffix}"
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str, data: str | bytes, fsync: bool = False) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) in one rename."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_jsonl(path: str, rows: list[Any], fsync: bool = False) -> None:
    """``rows`` as JSON lines, atomically; ASCII escapes, so any text survives the round trip."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows), fsync=fsync)


def iter_jsonl(path: str) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, value, None)`` for each non-blank line, or ``(line number, None, why)`` for a bad one.

    A bad line is one that is not UTF-8 or not JSON; the rest of the file is still read.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, f"not UTF-8 (byte {e.start + 1} of the line)"
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as e:
                yield number, None, f"not valid JSON ({e.msg} at column {e.colno})"
