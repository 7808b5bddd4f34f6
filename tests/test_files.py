"""rlvr.files: atomic replacement and line-by-line JSON lines."""

import os

import pytest

from rlvr.files import atomic_path, atomic_write, iter_jsonl, write_jsonl


def test_atomic_write_replaces_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = str(tmp_path / "page.html")
    atomic_write(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("half a ne")
            raise RuntimeError("killed mid-write")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["page.html"]  # no temporary file left behind
    atomic_write(path, "new \u00e9")
    assert open(path, encoding="utf-8").read() == "new \u00e9"


def test_jsonl_round_trip_and_bad_lines_are_reported_with_their_numbers(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    rows = [{"completion": "\\boxed{7} \u2014 \u4e03 </script>", "n": 1}, {"n": 2}]
    write_jsonl(path, rows)
    assert [row for _, row, _ in iter_jsonl(path)] == rows
    with open(path, "ab") as f:
        f.write(b"\n{\"n\": 3, \"bad\": \"\xff\xfe\"}\n{not json}\n{\"n\": 5}")  # blank, not UTF-8, not JSON, cut
    read = list(iter_jsonl(path))
    assert [(n, row) for n, row, bad in read if not bad] == [(1, rows[0]), (2, rows[1]), (6, {"n": 5})]
    bad = {n: why for n, _, why in read if why}
    assert set(bad) == {4, 5}
    assert bad[4].startswith("not UTF-8") and bad[5].startswith("not valid JSON")
