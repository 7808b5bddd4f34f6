"""python -m rlvr.score: accuracy, outcome counts and the per-line scored file."""

import json
import os
import subprocess
import sys

import pytest

from rlvr.score import main, scored_path

ROWS = [
    {"id": "a", "completion": "So there are 7 red cubes. \\boxed{7}", "answer": "7"},
    {"id": "b", "completion": "\\boxed{8}", "answer": "7"},
    {"id": "c", "completion": "I think it is 7", "answer": "7"},
    {"completion": "The answer is 50\\%.", "answer": 0.5},  # numeric gold, no id
    {"id": "e", "completion": "\\boxed{7}", "answer": "seven"},  # unusable gold
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")


def test_score_file(tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    _write(preds, ROWS)
    assert main([str(preds)]) == 0
    out, err = capsys.readouterr()
    assert "accuracy: 0.4000 (2/5)" in out
    assert "correct          2" in out and "no_answer        1" in out and "error            1" in out
    assert "line 5" in err and "seven" in err
    scored = [json.loads(line) for line in (tmp_path / "preds.scored.jsonl").read_text().splitlines()]
    assert [s["line"] for s in scored] == [1, 2, 3, 4, 5]
    assert [s["id"] for s in scored] == ["a", "b", "c", None, "e"]
    assert [s["outcome"] for s in scored] == ["correct", "wrong", "no_answer", "correct", "error"]
    assert scored[0]["extracted"] == "7" and scored[0]["has_boxed"] and scored[0]["fast_path"]


def test_last_number_policy(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    _write(preds, ROWS[:3])
    assert main([str(preds), "--answer-extraction", "last_number"]) == 0
    assert "accuracy: 0.6667 (2/3)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"completion": "x"}\n', "p.jsonl:1: missing key(s) ['answer']"),
        ('{"completion": "x", "answer": "1"}\nnot json\n', "p.jsonl:2: not valid JSON"),
        ('[1, 2]\n', "p.jsonl:1: expected a JSON object"),
        ('{"completion": 3, "answer": "1"}\n', "p.jsonl:1: 'completion' must be a string"),
    ],
)
def test_bad_input_names_the_line(tmp_path, capsys, content, message):
    (tmp_path / "p.jsonl").write_text(content)
    assert main([str(tmp_path / "p.jsonl")]) == 2
    assert message in capsys.readouterr().err


def test_scored_path():
    from pathlib import Path

    assert scored_path(Path("/x/preds.jsonl")) == Path("/x/preds.scored.jsonl")
    assert scored_path(Path("/x/preds.txt")) == Path("/x/preds.txt.scored.jsonl")


def test_module_entry_point(tmp_path):
    preds = tmp_path / "preds.jsonl"
    _write(preds, ROWS[:2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "rlvr.score", str(preds)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy: 0.5000 (1/2)" in proc.stdout
