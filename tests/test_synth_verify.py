"""Stage 4: solvers, unanimity under rlvr's verifier, the annotators' round trip, the difficulty filter."""

import csv
import json

import pytest
from PIL import Image

from rlvr.rewards import default_verifier
from rlvr.synth.client import ScriptedClient
from rlvr.synth.records import Hop, Query
from rlvr.synth.verify import (SOLVER_INSTRUCTION, difficulty_filter, export_for_annotators, import_annotations,
                               keep_unanimous, solve, solve_request, unanimous)

VERIFIER = default_verifier()


def _query(qid, answer="3", image="scene.png"):
    hops = [Hop("Which mug is left of the sign?", ["mug-1", "sign-1"], "multi"),
            Hop("What number is on it?", ["mug-1"], "single", "3")]
    return Query(id=qid, image=image, question=f"Question {qid}: what number is on the mug left of the sign?",
                 answer=answer, hops=hops, instances=["mug-1", "sign-1"], writer="vlm:test")


@pytest.fixture
def images(tmp_path):
    Image.new("RGB", (32, 32), "white").save(tmp_path / "scene.png")
    return str(tmp_path)


@pytest.mark.parametrize("answers, kept, reason", [
    (["\\boxed{3}", "\\boxed{3}", "\\boxed{3}", "\\boxed{3}"], True, None),
    (["\\boxed{3.0}", "The answer is 3.", "3", "so \\boxed{6/2}"], True, None),  # "3.0" agrees with "3"
    (["\\boxed{3}", "\\boxed{3}", "\\boxed{4}", "\\boxed{3}"], False, "solver_disagrees"),
    (["\\boxed{3}", "I cannot tell from the image", "\\boxed{3}", "\\boxed{3}"], False, "no_answer"),
    (["\\boxed{3}", None, "\\boxed{3}", "\\boxed{3}"], False, "solver_failed"),
    ([None, "unclear", "\\boxed{5}", "\\boxed{3}"], False, "solver_disagrees"),  # disagreement comes first
])
def test_unanimity_under_the_verifier(answers, kept, reason):
    assert unanimous(_query("q"), answers, VERIFIER) == (kept, reason)


def test_a_writer_answer_that_is_not_a_gold_is_never_kept():
    assert unanimous(_query("q", answer="three"), ["three"] * 4, VERIFIER) == (False, "answer_not_a_number")


def test_solver_requests_hold_the_image_and_the_question_only(images):
    q = _query("q")
    req = solve_request(q, images_dir=images, n=4, temperature=0.8)
    (message,) = req.messages
    assert [p["type"] for p in message["content"]] == ["image", "text"]
    assert message["content"][0]["image"] == f"{images}/scene.png"
    assert message["content"][1]["text"] == f"{q.question}\n\n{SOLVER_INSTRUCTION}"
    assert "mug-1" not in str(req.messages) and (req.n, req.temperature) == (4, 0.8)


def test_four_solvers_one_disagrees_and_the_query_is_dropped(images):
    q1, q2 = _query("q1"), _query("q2", answer="7")
    # four solver models, one sample each; solver 3 says 8 on q2
    def solver(k):
        return ScriptedClient(lambda r: ["\\boxed{3}" if "q1:" in r.messages[0]["content"][1]["text"]
                                         else ("\\boxed{8}" if k == 3 else "\\boxed{7.0}")])
    answers = solve([q1, q2], [solver(k) for k in range(4)], samples=1, images_dir=images)
    assert answers == {"q1": ["\\boxed{3}"] * 4, "q2": ["\\boxed{7.0}"] * 3 + ["\\boxed{8}"]}
    kept, dropped = keep_unanimous([q1, q2], answers, VERIFIER)
    assert kept == [q1] and dropped == [(q2, "solver_disagrees")]
    assert q2.provenance["verify"]["reason"] == "solver_disagrees"
    # or K = 4 samples of one model; a lost sample is None and drops the query
    one = ScriptedClient(["\\boxed{3}", ["\\boxed{7}", None, "\\boxed{7}", "\\boxed{7}"]])
    answers = solve([q1, q2], one, samples=4, temperature=1.0, images_dir=images)
    assert [r.n for r in one.requests] == [4, 4]
    assert keep_unanimous([q1, q2], answers, VERIFIER) == ([q1], [(q2, "solver_failed")])


@pytest.mark.parametrize("name", ["annotations.csv", "annotations.jsonl"])
def test_the_annotators_round_trip(tmp_path, name):
    queries = [_query("q1"), _query("q2", answer="0.5"), _query("q3", answer="12"), _query("q4")]
    path = export_for_annotators(queries, str(tmp_path / name), annotators=3, images_dir="/data/images")
    # what the annotators see: no writer answer, three empty slots
    if name.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        with open(path) as f:
            rows = [json.loads(line) for line in f]
    assert list(rows[0]) == ["id", "image", "question", "answer_1", "answer_2", "answer_3"]
    assert rows[1]["image"] == "/data/images/scene.png" and rows[1]["answer_2"] == ""
    filled = {"q1": ["3", "3.0", " 3 "], "q2": ["1/2", "0.5", "0.6"], "q3": ["12", " ", "12"], "q4": ["3", "3", "3"]}
    for row in rows:
        row.update(zip(["answer_1", "answer_2", "answer_3"], filled[row["id"]]))
    rows = [r for r in rows if r["id"] != "q4"]  # nobody got to q4
    with open(path, "w", newline="") as f:
        if name.endswith(".csv"):
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    answers = import_annotations(path)
    assert answers == {"q1": ["3", "3.0", "3"], "q2": ["1/2", "0.5", "0.6"], "q3": ["12", None, "12"]}
    assert answers.skipped == []
    kept, dropped = keep_unanimous(queries, answers, VERIFIER)
    assert kept == [queries[0]]
    assert [(q.id, reason) for q, reason in dropped] == [("q2", "solver_disagrees"), ("q3", "solver_failed"),
                                                         ("q4", "not_annotated")]


def test_bad_annotation_rows_are_counted_skips_with_messages(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "q1", "answer_1": "3", "answer_2": 3}),  # a number typed as a number is fine
        "{not json",
        json.dumps(["q2", "3"]),
        json.dumps({"question": "no id", "answer_1": "3"}),
        json.dumps({"id": "q1", "answer_1": "4"}),
        json.dumps({"id": "q3", "answer": "4"}),
        json.dumps({"id": "q4", "answer_1": ["4"]}),
        "",
        json.dumps({"id": "q5", "answer_2": "5", "answer_10": "6", "answer_1": "4"}),
    ]) + "\n")
    answers = import_annotations(str(path))
    assert answers == {"q1": ["3", "3"], "q5": ["4", "5", "6"]}  # slots in numeric order
    assert [m.split(": ", 1)[1].split(" (")[0] for m in answers.skipped] == [
        "not JSON", "not a JSON object", "no id", "id 'q1' repeats an earlier row", "no answer_1, answer_2, ... fields",
        "answer_1 is a list, not text"]
    assert all(m.startswith(f"{path} line ") for m in answers.skipped)
    assert [m.split(":")[0].rsplit(" ", 1)[1] for m in answers.skipped] == ["2", "3", "4", "5", "6", "7"]
    bad = tmp_path / "b.csv"
    bad.write_text("question,answer_1\nwhat?,3\n")
    with pytest.raises(ValueError, match="no 'id' column"):
        import_annotations(str(bad))


def test_difficulty_filter_drops_what_the_weak_model_always_solves(images):
    easy, hard = _query("easy", answer="3"), _query("hard", answer="5")
    # the weak solver: always right on "easy" (written three ways), wrong once in four on "hard"
    weak = ScriptedClient([["\\boxed{3}", "3.0", "The answer is 3.", "\\boxed{6/2}"],
                           ["\\boxed{5}", "\\boxed{5}", "\\boxed{4}", "\\boxed{5}"]])
    kept, dropped = difficulty_filter([easy, hard], weak, n=4, verifier=VERIFIER, images_dir=images)
    assert kept == [hard] and dropped == [(easy, "always_solved")]
    assert [r.n for r in weak.requests] == [4, 4]
    assert hard.provenance["difficulty"] == {"samples": 4, "correct": 3, "client": "scripted"}
    # a lost sample never makes a query look solved
    lossy = ScriptedClient([["\\boxed{3}", None]])
    assert difficulty_filter([easy], lossy, n=2, verifier=VERIFIER, images_dir=images) == ([easy], [])
