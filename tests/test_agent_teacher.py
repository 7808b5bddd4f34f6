"""rlvr.agent.teacher: multi-turn trajectories with the tools, kept when the answer verifies, written as SFT JSONL."""

import base64
import io
import json
import os

import pytest
from PIL import Image

# the chat completions server on 127.0.0.1 of the client tests
from test_synth_client import FakeServer

from rlvr.agent.calls import RESPONSE_CLOSE, RESPONSE_OPEN
from rlvr.agent.teacher import (
    Teacher,
    build_setup,
    cut_at_call,
    load_tasks,
    main,
)
from rlvr.config import load_config
from rlvr.devtools.make_demo_data import COLOURS
from rlvr.devtools.make_tools_demo_data import main as make_data
from rlvr.devtools.zoom_teacher import ZoomSolver
from rlvr.rewards import Verifier
from rlvr.synth.client import OpenAIClient, ScriptedClient


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


OVERRIDES = ["reward.answer_extraction=last_number", "tools.names=[zoom_in]", "data.prompt_template={question}"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools-demo")
    make_data(["--out", str(out), "--train", "0", "--val", "0", "--sft", "40", "--seed", "1"])
    return out


@pytest.fixture(scope="module")
def verifier():
    with Verifier(answer_extraction="last_number", num_workers=1) as v:
        yield v


def teacher_for(data, client, verifier, **kwargs):
    cfg = load_config(None, OVERRIDES)
    registry, data_cfg = build_setup(cfg)
    tasks, skipped = load_tasks(str(data / "sft_tasks.jsonl"), data_cfg)
    assert not skipped
    teacher = Teacher(client, registry, data_cfg, verifier, **kwargs)
    return teacher, [teacher.start(i, row, ex) for i, (row, ex) in enumerate(tasks)]


def call(box, factor=4):
    return f'Zoom.<tool_call>\n{json.dumps({"name": "zoom_in", "arguments": {"bbox_2d": box, "factor": factor}})}\n</tool_call>'


def zoom_then(answer):
    """A responder: zoom into the row's square (its box from the question), then ``answer(request)``."""
    boxes = {"top-left": [224, 224, 276, 276], "top-right": [724, 224, 776, 276],
             "bottom-left": [224, 724, 276, 776], "bottom-right": [724, 724, 776, 776]}

    def respond(request):
        if len(request.messages) == 2:  # system, user: the first turn
            question = request.messages[1]["content"][-1]["text"]
            return [call(next(b for q, b in boxes.items() if q in question))]
        return [answer(request)]
    return respond


def test_the_scripted_teacher_solves_the_demo_with_one_zoom_each(data, verifier):
    rows = read_jsonl(data / "sft_tasks.jsonl")
    cfg = load_config(None, OVERRIDES)
    registry, data_cfg = build_setup(cfg)
    teacher = Teacher(None, registry, data_cfg, verifier)
    tasks, _ = load_tasks(str(data / "sft_tasks.jsonl"), data_cfg)
    boxes = {ZoomSolver.key(teacher.prompt_messages(ex)): row["target_box"] for row, ex in tasks}
    teacher.client = ScriptedClient(ZoomSolver(boxes, {d: COLOURS[d] for d in range(8)}))
    out = teacher.run([teacher.start(i, row, ex) for i, (row, ex) in enumerate(tasks)])
    kept = [t for t in out if t.end == "kept"]
    assert len(kept) >= 0.95 * len(rows)
    for t, row in zip(out, rows):
        assert [m["role"] for m in t.messages] == ["assistant", "tool", "assistant"] and t.calls == 1
        assert t.messages[0]["content"] == call(row["target_box"]).replace("Zoom.", "")
        assert t.messages[-1]["content"] == row["answer"]  # the digit, as last_number reads it
        assert t.messages[1]["content"][1]["image"].size == (96, 96)
    assert teacher.requests == 2 * len(rows)


def test_the_zoom_solver_reads_the_colour_not_the_gold():
    solver = ZoomSolver({}, {d: COLOURS[d] for d in range(8)}, answer_extraction="boxed")
    image = Image.new("RGB", (96, 96), (128, 128, 128))
    image.paste(COLOURS[6], (16, 16, 80, 80))
    request_messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": call([0, 0, 9, 9])},
                        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image", "image": image}]}]
    from rlvr.synth.chat import ChatRequest

    assert solver(ChatRequest(messages=request_messages)) == ["\\boxed{6}"]
    request_messages[-1]["content"][1]["image"] = Image.new("RGB", (96, 96), (128, 128, 128))  # no square: grey only
    assert solver(ChatRequest(messages=request_messages)) == ["I cannot tell."]


def test_a_wrong_answer_no_answer_endless_calls_and_lost_samples_are_dropped_and_counted(data, verifier):
    for responder, reason in [(zoom_then(lambda r: "9"), "wrong_answer"),  # 9: no gold of the 5-digit task (zoom_then(lambda r: "I cannot tell."), "no_answer"),
                              (zoom_then(lambda r: call([224, 224, 276, 276])), "max_turns"),
                              (lambda r: [None], "lost_sample")]:
        teacher, trajectories = teacher_for(data, ScriptedClient(responder), verifier, max_turns=3)
        ends = {t.end for t in teacher.run(trajectories[:5])}
        assert ends == {reason}, (reason, ends)
    # budgets of the run's tools config: a second call, or an observation image past the limit
    for limits, reason in [({"max_calls": 1}, "max_calls"), ({"max_images": 0}, "max_images")]:
        endless = zoom_then(lambda r: call([224, 224, 276, 276]))
        teacher, trajectories = teacher_for(data, ScriptedClient(endless), verifier, max_turns=4, **limits)
        assert {(t.end, t.calls) for t in teacher.run(trajectories[:3])} == {(reason, 1)}


def test_a_bad_call_gives_an_error_observation_the_teacher_reads(data, verifier):
    seen = []

    def respond(request):
        if len(request.messages) == 2:
            return [call([224, 224, 1276, 276])]  # x2 over 1000: refused by the schema
        seen.append(request.messages[-1])
        return ["3"]

    teacher, trajectories = teacher_for(data, ScriptedClient(respond), verifier)
    gold3 = [t for t in trajectories if t.example.answer == "3"][:2]
    for t in teacher.run(gold3):
        assert t.end == "tool_error" and t.tool_errors == 1 and t.calls == 1
        assert t.messages[1] == {"role": "tool", "content": [{"type": "text", "text": "Error: zoom_in: argument "
                                                              "'bbox_2d'[2] must be <= 1000, got 1276"}]}
    assert seen[0] == {"role": "user", "content": [
        {"type": "text", "text": f"{RESPONSE_OPEN}\nError: zoom_in: argument 'bbox_2d'[2] must be <= 1000, got 1276"},
        {"type": "text", "text": f"\n{RESPONSE_CLOSE}"}]}
    teacher.keep_tool_errors = True
    _, again = teacher_for(data, ScriptedClient(respond), verifier)
    assert {t.end for t in teacher.run([t for t in again if t.example.answer == "3"][:2])} == {"kept"}


class ZoomServer(FakeServer):
    """Answers like a VLM with tools: a zoom call first, then the digit of the observation image's colour."""

    def reply(self, body):
        last = body["messages"][-1]
        if last["role"] == "user" and len(body["messages"]) > 2:
            url = next(p["image_url"]["url"] for p in last["content"] if p["type"] == "image_url")
            image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            digit = ZoomSolver({}, {d: COLOURS[d] for d in range(8)}).read_digit(image)
            text = f"The square is digit {digit}."
        else:
            text = "Let me look closer. " + call([224, 224, 276, 276]).replace("Zoom.", "") + " and more text"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


def test_the_openai_path_sends_the_observation_image_as_a_user_message(data, verifier):
    server = ZoomServer()
    try:
        client = OpenAIClient(server.url, "teacher-vlm", backoff_s=0.01)
        teacher, trajectories = teacher_for(data, client, verifier)
        top_left = [t for t in trajectories if t.row["quadrant"] == "top-left"][:3]
        out = teacher.run(top_left)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    assert {t.end for t in out} == {"kept"} and server.hits == 6
    first = next(b for b in server.bodies if len(b["messages"]) == 2)
    second = next(b for b in server.bodies if len(b["messages"]) == 4)
    assert first["messages"][0]["role"] == "system" and "zoom_in" in first["messages"][0]["content"]
    assert [p["type"] for p in first["messages"][1]["content"]] == ["image_url", "text"]
    # the reply is cut after </tool_call>, as a rollout stops there
    assert second["messages"][2]["content"].endswith("</tool_call>") and "more text" not in second["messages"][2]["content"]
    observation = second["messages"][3]
    assert observation["role"] == "user" and [p["type"] for p in observation["content"]] == ["text", "image_url", "text"]
    assert observation["content"][0]["text"].startswith(f"{RESPONSE_OPEN}\nZoomed into [224, 224, 276, 276] by 4x")
    sent = Image.open(io.BytesIO(base64.b64decode(observation["content"][1]["image_url"]["url"].split(",", 1)[1])))
    assert sent.size == (96, 96)
    assert [t.messages[-1]["content"] for t in out] == [f"The square is digit {t.example.answer}." for t in out]


def test_the_command_writes_sft_jsonl_that_round_trips(data, tmp_path, capsys):
    out = tmp_path / "sft" / "sft.jsonl"
    report = main(["--data", str(data / "sft_tasks.jsonl"), "--out", str(out), "--teacher", "scripted",
                   "--batch-size", "16", *OVERRIDES])
    assert report.kept == 40 and report.calls == {1: 40} and not report.dropped
    assert "40 kept of 40" in capsys.readouterr().out
    summary = json.loads((tmp_path / "sft" / "sft.report.json").read_text())
    assert summary["kept_share"] == 1.0 and summary["mean_calls"] == 1.0
    source = read_jsonl(data / "sft_tasks.jsonl")
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [s["id"] for s in source]
    for row, src in zip(rows, source):
        assert {k: v for k, v in row.items() if k not in ("images", "messages")} == \
               {k: v for k, v in src.items() if k != "images"}
        assert not os.path.isabs(row["images"][0])
        assert (out.parent / row["images"][0]).read_bytes() == (data / src["images"][0]).read_bytes()
        assert [m["role"] for m in row["messages"]] == ["assistant", "tool", "assistant"]
        text, image = row["messages"][1]["content"]
        assert text["type"] == "text" and image["type"] == "image" and not os.path.isabs(image["image"])
        assert image["image"].startswith("sft_images/") and Image.open(out.parent / image["image"]).size == (96, 96)
        assert row["messages"][2]["content"] == src["answer"]


def test_rows_with_teacher_zooms_2_get_two_identical_calls_then_the_answer(tmp_path):
    make_data(["--out", str(tmp_path / "d"), "--train", "0", "--val", "0", "--sft", "12", "--seed", "2",
               "--margin", "0", "--sft-double-zoom", "0.5"])
    source = read_jsonl(tmp_path / "d" / "sft_tasks.jsonl")
    twice = [r["teacher_zooms"] == 2 for r in source]
    assert 0 < sum(twice) < len(source)  # both kinds among 12 rows (seed 2)
    out = tmp_path / "sft.jsonl"
    budget = ["tools.max_calls=2", "tools.max_turns=3", "tools.max_images=2", "tools.max_total_tokens=512"]
    report = main(["--data", str(tmp_path / "d" / "sft_tasks.jsonl"), "--out", str(out), "--teacher", "scripted",
                   *OVERRIDES, *budget])
    assert report.kept == 12 and report.calls == {1: twice.count(False), 2: twice.count(True)}
    for row, src, double in zip(read_jsonl(out), source, twice):
        roles = [m["role"] for m in row["messages"]]
        assert roles == (["assistant", "tool"] * (2 if double else 1)) + ["assistant"]
        calls = [m["content"] for m in row["messages"] if m["role"] == "assistant"][:-1]
        assert calls == [call(src["target_box"]).replace("Zoom.", "")] * len(calls)
        assert row["messages"][-1]["content"] == src["answer"]
    # under a one-call budget the teacher's second call ends the trajectory: dropped, counted
    report = main(["--data", str(tmp_path / "d" / "sft_tasks.jsonl"), "--out", str(tmp_path / "one.jsonl"),
                   "--teacher", "scripted", *OVERRIDES, "tools.max_calls=1"])
    assert report.kept == twice.count(False) and sum(report.dropped.values()) == twice.count(True)


def test_bad_rows_are_skipped_and_counted_and_a_missing_target_box_is_a_message(data, tmp_path, capsys):
    good = read_jsonl(data / "sft_tasks.jsonl")[0]
    good["images"] = [str(data / good["images"][0])]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "answer": ""})]) + "\n")
    report = main(["--data", str(tasks), "--out", str(tmp_path / "o.jsonl"), "--teacher", "scripted", *OVERRIDES])
    assert report.kept == 1 and report.skipped_rows == {"bad_json": 1, "bad_gold": 1}
    del good["target_box"]
    tasks.write_text(json.dumps(good) + "\n")
    with pytest.raises(SystemExit, match="needs a target_box"):
        main(["--data", str(tasks), "--out", str(tmp_path / "o.jsonl"), "--teacher", "scripted", *OVERRIDES])


def test_cut_at_call():
    assert cut_at_call("a <tool_call>{}</tool_call> b </tool_call>") == "a <tool_call>{}</tool_call>"
    assert cut_at_call("7") == "7"


def test_the_engine_teacher_runs_the_tiny_model_and_counts_every_row(data, tmp_path, qwen25_dir):
    report = main(["--data", str(data / "sft_tasks.jsonl"), "--out", str(tmp_path / "e.jsonl"), "--teacher", "engine",
                   "--model", qwen25_dir, "--limit", "3", "--max-tokens", "4", *OVERRIDES,
                   "data.max_pixels=12544", "rollout.micro_batch_size=4"])
    assert report.kept + sum(report.dropped.values()) == 3 and report.requests >= 3


def test_the_teachers_context_is_the_rl_context_in_the_chat_template(data, verifier, qwen25_dir):
    """The conversation the teacher is sent, rendered by the model's chat template, is the text an RL
    rollout builds: the prompt, the call, ``observation_text`` (and so the SFT layout)."""
    from rlvr.agent.calls import generation_prefix, observation_text
    from rlvr.agent.tools import Observation
    from rlvr.data import prompt_text
    from rlvr.models import load_processor
    from rlvr.synth.chat import normalise, with_images

    processor = load_processor(qwen25_dir)
    teacher, trajectories = teacher_for(data, ScriptedClient(zoom_then(lambda r: "3")), verifier)
    t = trajectories[0]
    teacher.max_turns = 2
    requests = []
    teacher.client = ScriptedClient(lambda r: requests.append(r) or zoom_then(lambda r: "3")(r))
    teacher.run([t])
    messages, _ = normalise(requests[-1])
    sent = processor.apply_chat_template(with_images(messages, lambda k: {"type": "image"}),
                                         add_generation_prompt=True, tokenize=False)
    observation = Observation(text=t.messages[1]["content"][0]["text"], images=[t.messages[1]["content"][1]["image"]])
    rl = (prompt_text(t.example, processor, teacher.data_cfg) + t.messages[0]["content"]
          + observation_text(observation, generation_prefix(processor)))
    assert sent == rl
