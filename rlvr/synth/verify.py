"""Stage 4: K independent solvers must agree with the writer, and a weaker model must not always solve it.

    answers = solve(queries, solver_client, samples=4)          # K samples of one model ...
    answers = solve(queries, [client_a, client_b], samples=2)   # ... or of several (K = 4 here)
    kept, dropped = keep_unanimous(queries, answers, verifier)  # dropped: (query, reason)
    kept, dropped = difficulty_filter(kept, weak_client, n=8, verifier=verifier)

Humans instead of (or besides) models: ``export_for_annotators`` writes a CSV or JSONL with
an empty ``answer_1``..``answer_K`` per query (the writer's answer is not in it);
``import_annotations`` reads the filled file back into the same ``answers`` mapping.

Equality is always the training reward's: a solver's answer agrees when rlvr's ``Verifier``
(``verifier_from_config`` for a run's settings, ``default_verifier`` otherwise) scores it
correct against the writer's answer as gold, so "3.0" agrees with "3", and an annotator's
bare "3" counts as an answer. Drop reasons are in DROP_REASONS.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence

from PIL import Image

from rlvr.difficulty import all_correct
from rlvr.rewards.gold import GoldParseError, parse_gold
from rlvr.rewards.verifier import Verifier
from rlvr.synth.client import ChatRequest, VLMClient
from rlvr.synth.records import Query

logger = logging.getLogger(__name__)

DROP_REASONS = ("solver_disagrees", "no_answer", "solver_failed", "not_annotated", "answer_not_a_number",
                "always_solved")
SOLVER_INSTRUCTION = ("Answer the question about the image. Think step by step, then end with the final "
                      "answer, one number, written as \\boxed{...}.")
_SLOT_RE = re.compile(r"answer_(\d+)$")


# -- solvers -------------------------------------------------------------------------------
def solve_request(query: Query, *, images_dir: str | None = None, n: int = 1, temperature: float = 1.0,
                  max_tokens: int = 2048, image: Image.Image | str | None = None) -> ChatRequest:
    """A solver's request: the image and the question only (no hops, crops or boxes), and the
    instruction to end with the number in \\boxed{}. The image is ``image`` if given, else
    ``query.image`` (joined to ``images_dir`` when relative)."""
    if image is None:
        image = query.image if images_dir is None or os.path.isabs(query.image) else os.path.join(images_dir, query.image)
    content = [{"type": "image", "image": image},
               {"type": "text", "text": f"{query.question}\n\n{SOLVER_INSTRUCTION}"}]
    return ChatRequest(messages=[{"role": "user", "content": content}], n=n, temperature=temperature,
                       max_tokens=max_tokens)


def solve(queries: Sequence[Query], solvers: VLMClient | Sequence[VLMClient], *, samples: int = 4,
          temperature: float = 1.0, images_dir: str | None = None, max_tokens: int = 2048) -> dict[str, list[str | None]]:
    """Query id -> the solvers' replies: ``samples`` from each client, in client order
    (K = samples x clients). Use temperature > 0 when the K answers come from one model, or they
    are one answer K times. None marks a sample the client could not produce."""
    clients = [solvers] if isinstance(solvers, VLMClient) else list(solvers)
    if not clients or samples < 1:
        raise ValueError(f"solve needs at least one client and samples >= 1 (got {len(clients)} clients, samples={samples})")
    out: dict[str, list[str | None]] = {q.id: [] for q in queries}
    requests = [solve_request(q, images_dir=images_dir, n=samples, temperature=temperature, max_tokens=max_tokens)
                for q in queries]
    for client in clients:
        for q, replies in zip(queries, client.complete(requests)):
            out[q.id].extend(list(replies)[:samples] + [None] * (samples - len(replies)))
    return out


# -- unanimity -----------------------------------------------------------------------------
def unanimous(query: Query, answers: Sequence[str | None], verifier: Verifier) -> tuple[bool, str | None]:
    """(True, None) when every answer equals the writer's under ``verifier``; else (False, reason).

    Reasons, the first that applies: answer_not_a_number (the writer's answer is not a gold),
    solver_disagrees (an answer the verifier scores wrong, or could not decide), no_answer
    (an answer with no final number), solver_failed (None: the client produced nothing).
    """
    if not answers:
        raise ValueError(f"unanimous: no answers for query {query.id}; K solvers give K answers")
    try:
        gold = parse_gold(query.answer)
    except GoldParseError:
        return False, "answer_not_a_number"
    given = [a for a in answers if a is not None]
    outcomes = {r.outcome for r in verifier.verify_batch(given, [gold] * len(given))}
    if outcomes - {"correct", "no_answer"}:
        return False, "solver_disagrees"
    if "no_answer" in outcomes:
        return False, "no_answer"
    if len(given) < len(answers):
        return False, "solver_failed"
    return True, None


def keep_unanimous(queries: Sequence[Query], answers: dict[str, Sequence[str | None]],
                   verifier: Verifier) -> tuple[list[Query], list[tuple[Query, str]]]:
    """The queries whose answers are unanimous with the writer (``unanimous``), and the dropped
    ones with their reason; a query with no entry in ``answers`` is dropped as not_annotated.
    Each query's provenance["verify"] records its answers and verdict."""
    kept, dropped = [], []
    for q in queries:
        if not answers.get(q.id):
            dropped.append((q, "not_annotated"))
            continue
        ok, reason = unanimous(q, answers[q.id], verifier)
        q.provenance["verify"] = {"answers": list(answers[q.id]), "kept": ok, "reason": reason}
        if ok:
            kept.append(q)
        else:
            dropped.append((q, reason))
    return kept, dropped


# -- the human round trip ------------------------------------------------------------------
def export_for_annotators(queries: Sequence[Query], path: str, *, annotators: int = 4,
                          images_dir: str | None = None) -> str:
    """Write one row per query for ``annotators`` people to answer independently: id, image
    (joined to ``images_dir`` when given and relative), question, and empty answer_1..answer_K.
    CSV when ``path`` ends in .csv (opens in a spreadsheet), else JSONL. Returns ``path``."""
    if annotators < 1:
        raise ValueError(f"export_for_annotators: annotators must be >= 1, got {annotators}")
    slots = [f"answer_{i}" for i in range(1, annotators + 1)]
    rows = []
    for q in queries:
        image = q.image if images_dir is None or os.path.isabs(q.image) else os.path.join(images_dir, q.image)
        rows.append({"id": q.id, "image": image, "question": q.question, **{s: "" for s in slots}})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.lower().endswith(".csv"):
            writer = csv.DictWriter(f, fieldnames=["id", "image", "question", *slots])
            writer.writeheader()
            writer.writerows(rows)
        else:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


class Annotations(dict):
    """Query id -> the annotators' answers in slot order (None for a slot left empty), plus
    ``skipped``: one message per row that could not be read (file and line, and why)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[str] = []


def _rows(path: str) -> list[tuple[int, object]]:
    """(line number, row) pairs: dicts from a CSV, parsed JSON (or the error text) from a JSONL."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.lower().endswith(".csv"):
            reader = csv.DictReader(f)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise ValueError(f"{path}: no 'id' column in the header {reader.fieldnames}; "
                                 "expected the file export_for_annotators wrote (id, image, question, answer_1, ...)")
            return [(reader.line_num, row) for row in reader]
        out: list[tuple[int, object]] = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append((number, json.loads(line)))
                except ValueError as e:
                    out.append((number, f"not JSON ({e})"))
        return out


def _slot_answers(row: dict) -> list[str | None] | str:
    """The row's answers in slot order, or why it has none usable."""
    slots = sorted((int(m.group(1)), key) for key in row if isinstance(key, str) and (m := _SLOT_RE.match(key)))
    if not slots:
        return "no answer_1, answer_2, ... fields"
    answers: list[str | None] = []
    for _, key in slots:
        value = row[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # an annotator's 3 in JSON
        if value is not None and not isinstance(value, str):
            return f"{key} is a {type(value).__name__}, not text"
        answers.append(value.strip() if value and value.strip() else None)
    return answers


def import_annotations(path: str) -> Annotations:
    """Read back a file ``export_for_annotators`` wrote, after annotators filled it in.

    Bad rows (not JSON, no id, a repeated id, no answer slots, an answer that is not text) are
    skipped, counted in ``result.skipped`` with a message, and logged; an empty slot reads as
    None, so ``keep_unanimous`` drops that query as solver_failed unless another reason applies.
    """
    result = Annotations()
    for number, row in _rows(path):
        where = f"{path} line {number}"
        if not isinstance(row, dict):
            result.skipped.append(f"{where}: {row if isinstance(row, str) else 'not a JSON object'}")
            continue
        qid = row.get("id")
        qid = str(qid).strip() if isinstance(qid, (str, int)) and not isinstance(qid, bool) else ""
        answers = _slot_answers(row)
        if not qid:
            result.skipped.append(f"{where}: no id")
        elif qid in result:
            result.skipped.append(f"{where}: id {qid!r} repeats an earlier row (the first is kept)")
        elif isinstance(answers, str):
            result.skipped.append(f"{where}: {answers}")
        else:
            result[qid] = answers
    for message in result.skipped:
        logger.warning("annotations: skipped %s", message)
    return result


# -- difficulty ----------------------------------------------------------------------------
def difficulty_filter(queries: Sequence[Query], client: VLMClient, n: int, verifier: Verifier, *,
                      temperature: float = 1.0, images_dir: str | None = None,
                      max_tokens: int = 2048) -> tuple[list[Query], list[tuple[Query, str]]]:
    """Drop the queries a weaker model always solves: n samples each, scored by ``verifier``
    against the writer's answer (the training reward); all n correct -> dropped, "always_solved".

    A sample the client could not produce (None) scores 0, so it never makes a query look
    solved. Each query's provenance["difficulty"] records n and the number correct.
    """
    if n < 1:
        raise ValueError(f"difficulty_filter: n must be >= 1, got {n}")
    requests = [solve_request(q, images_dir=images_dir, n=n, temperature=temperature, max_tokens=max_tokens)
                for q in queries]
    kept, dropped = [], []
    for q, replies in zip(queries, client.complete(requests)):
        replies = (list(replies) + [None] * n)[:n]
        given = [r for r in replies if r is not None]
        scored = iter(verifier.verify_batch(given, [q.answer] * len(given)))
        rewards = [next(scored).reward if r is not None else 0.0 for r in replies]
        q.provenance["difficulty"] = {"samples": n, "correct": int(sum(rewards)), "client": client.name}
        if all_correct(rewards):  # the rule online filtering during RL uses (rlvr.difficulty)
            dropped.append((q, "always_solved"))
        else:
            kept.append(q)
    return kept, dropped
