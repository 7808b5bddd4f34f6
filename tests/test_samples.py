"""Sample pages and tables: choosing rollouts, a self-contained escaped HTML page, wandb offline files."""

import glob
import json
import os
import re

import pytest
import torch

from rlvr.batch import Response
from rlvr.data import Example
from rlvr.rewards import parse_gold
from rlvr.sample_pages import FOLD_CHARS, SampleRow, write_sample_page
from rlvr.samples import SampleLogger, log_samples_wandb, pick_rollouts, rollout_rows
from tests.conftest import save_image

EVIL = 'The answer is \\boxed{7}</pre><script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'


def make_rows(tmp_path, long_text: str | None = None) -> list[SampleRow]:
    red = save_image(tmp_path / "red.png", (200, 120), (220, 30, 30))
    blue = save_image(tmp_path / "blue.png", (64, 64), (30, 30, 220))
    long_text = long_text or "\n".join(f"Step {i}: the colour still looks red, so keep counting." for i in range(80)) + \
        "\nSo the answer is \\boxed{3}. THE-VERY-END"
    return [
        SampleRow(id="q1", question="Which digit is <red>?", images=[red], completion=EVIL, extracted="7", gold="7",
                  reward=1.0, outcome="correct", source="colours", response_tokens=30, finished=True,
                  note="3/4 rewarded in its group"),
        SampleRow(id="q2", question="Two images: which is blue?", images=[red, blue], completion=long_text,
                  extracted="3", gold="2", reward=0.0, outcome="wrong", source="colours", response_tokens=900,
                  finished=False),
        SampleRow(id="q3", question="Text only: 1 + 1?", images=[], completion="", extracted=None, gold="2", reward=0.0,
                  outcome="no_answer"),
        SampleRow(id="q4", question="Missing image", images=[str(tmp_path / "gone.png")], completion="2", extracted="2",
                  gold="2", reward=1.0, outcome="correct"),
    ]


def test_pick_rollouts_spreads_prompts_and_mixes_outcomes():
    rewards = [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]  # four groups of 4
    assert pick_rollouts(rewards, 4, 4) == [1, 4, 8, 12]  # one per prompt; rewarded, then not, where possible
    assert len(set(pick_rollouts(rewards, 4, 8))) == 8
    assert len(pick_rollouts(rewards, 4, 100)) == 16
    assert pick_rollouts(rewards, 4, 0) == [] and pick_rollouts([], 4, 3) == []
    assert pick_rollouts(rewards, 4, 2) == [1, 8]  # prompts 0 and 2: evenly spread


def test_page_is_self_contained_escaped_and_folds_without_cutting(tmp_path):
    rows = make_rows(tmp_path)
    path = write_sample_page(str(tmp_path / "run"), 100, rows)
    assert path == str(tmp_path / "run" / "samples" / "step_000100.html")
    page = open(path, encoding="utf-8").read()
    # self-contained: images are data URIs, nothing is fetched from anywhere
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    assert "<script" not in page.replace("&lt;script", "")  # the model's text is escaped
    assert "&lt;/pre&gt;&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page
    # the long completion is folded, and complete
    assert "<details" in page and "THE-VERY-END" in page and "Step 79:" in page
    assert "show the whole completion" in page
    # what a reader needs: gold, extraction, reward, ids, lengths, the text-only row and the unreadable image
    for text in ("Gold answer", "Extracted answer", "reward 1.00 \u00b7 correct", "id q2", "900 tokens \u00b7 cut at the token limit",
                 "3/4 rewarded in its group", "text only", "(no final answer found)", "(empty completion)",
                 "image 1 could not be read", "Which digit is &lt;red&gt;?", "200\u00d7120 px"):
        assert text in page, text
    index = open(tmp_path / "run" / "samples" / "index.html", encoding="utf-8").read()
    assert 'href="step_000100.html"' in index
    write_sample_page(str(tmp_path / "run"), 200, rows[:1])
    second = open(tmp_path / "run" / "samples" / "step_000200.html", encoding="utf-8").read()
    assert 'href="step_000100.html"' in second  # link to the previous page
    assert "step 200" in open(tmp_path / "run" / "samples" / "index.html", encoding="utf-8").read()


def test_short_completion_is_not_folded(tmp_path):
    row = make_rows(tmp_path, long_text="x" * (FOLD_CHARS - 1))[1]
    page = open(write_sample_page(str(tmp_path), 1, [row]), encoding="utf-8").read()
    assert "<details" not in page and "x" * (FOLD_CHARS - 1) in page


def _batch(tmp_path):
    image = save_image(tmp_path / "img.png")
    examples = [Example(id=f"p{i}", question=f"q{i}?", answer=str(i), gold=parse_gold(str(i)), images=[image],
                        source="s") for i in range(2)]
    texts = ["\\boxed{0}", "\\boxed{5}", "no idea", "\\boxed{1}"]  # prompt 0: right, wrong; prompt 1: none, right
    per_response = [examples[0], examples[0], examples[1], examples[1]]
    responses = [Response(i // 2, torch.tensor([1, 2, 3]), torch.zeros(3), finished=i != 2) for i in range(4)]
    return per_response, responses, texts, [1.0, 0.0, 0.0, 1.0]


def test_rollout_rows_from_a_training_batch(tmp_path):
    per_response, responses, texts, rewards = _batch(tmp_path)
    rows = rollout_rows(per_response, responses, texts, rewards, group_size=2, n=2)
    assert [(r.id, r.extracted, r.outcome, r.reward) for r in rows] == [("p0", "0", "correct", 1.0),
                                                                         ("p1", None, "no_answer", 0.0)]
    assert rows[1].finished is False and rows[0].response_tokens == 3 and rows[0].note == "1/2 rewarded in its group"


def test_sample_logger_schedule_and_never_raises(tmp_path):
    from rlvr.config import Config

    cfg = Config(output_dir=str(tmp_path / "run"))
    logger = SampleLogger(cfg)
    assert (logger.every, logger.per_step) == (50, 4)  # defaults until log.samples_* exist in the config
    assert [s for s in range(1, 201) if logger.due(s)] == [1, 50, 100, 150, 200]
    per_response, responses, texts, rewards = _batch(tmp_path)
    path = logger.log(50, per_response, responses, texts, rewards)
    assert path and os.path.isfile(path)
    assert logger.log(51, per_response, responses, texts, rewards) is None
    assert logger.log(100, per_response, responses, texts[:1], rewards) is None  # broken input: logged, not raised


def test_wandb_offline_table_with_images(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # where wandb stages a table's media
    run = wandb.init(project="rlvr-test", dir=str(tmp_path), mode="offline")
    log_samples_wandb(run, 3, make_rows(tmp_path))
    run_dir, run_id = run.dir, run.id
    run.finish()
    wandb.teardown()  # stop the wandb service, which flushes the run's record file
    # The offline run's files: the record file names the table's artifact, the table itself is
    # in files/media, and its images are staged as PNG files for `wandb sync`.
    records = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / f"run-{run_id}.wandb"))
    assert records and f"run-{run_id}-samplesrollouts".encode() in open(records[0], "rb").read()
    tables = glob.glob(os.path.join(run_dir, "media", "table", "samples", "rollouts_*.table.json"))
    assert tables, os.listdir(run_dir)
    table = json.load(open(tables[0]))
    assert table["columns"][:4] == ["step", "id", "source", "image"] and len(table["data"]) == 4
    assert table["data"][0][1] == "q1" and table["data"][0][5] == EVIL
    staged = [p for p in glob.glob(str(tmp_path / "wandb-data" / "**" / "*"), recursive=True) if os.path.isfile(p)]
    pngs = [p for p in staged if open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) >= 2, staged  # q1's image and q2's first; q3 is text only, q4's image is missing


def _articles(page: str) -> list[tuple[str, float]]:
    """(completion text, reward on its badge) of every rollout on a page, in page order."""
    import html

    out = []
    for article in re.findall(r"<article.*?</article>", page, re.S):
        reward = float(re.search(r'class="badge (?:ok|bad)">reward (-?[0-9.]+)', article).group(1))
        text = re.findall(r'<pre class="completion">(.*?)</pre>', article, re.S)[-1]
        out.append((html.unescape(text), reward))
    return out


def test_page_shows_right_answers_wherever_they_are_with_their_own_rewards(tmp_path):
    """The issue: a step with 3 rewarded rollouts showed four rewards of 0, because only the
    evenly spread prompts (0, 2, 4, 6 here) were looked at. Rewarded ones in other prompts
    must be shown, each with the reward it was given."""
    from rlvr.config import Config

    image = save_image(tmp_path / "img.png")
    examples = [Example(id=f"p{g}", question=f"q{g}?", answer=str(g), gold=parse_gold(str(g)), images=[image])
                for g in range(8)]
    per_response = [examples[g] for g in range(8) for _ in range(4)]  # 8 prompts x G=4, prompt-major
    texts = [f"prompt {g} sample {j}: \\boxed{{{g if (g, j) in ((1, 2), (3, 0), (5, 3)) else 9}}}"
             for g in range(8) for j in range(4)]
    rewards = [0.0] * 32
    rewards[1 * 4 + 2], rewards[3 * 4 + 0], rewards[5 * 4 + 3] = 1.0, 0.75, 0.5  # distinct: alignment shows
    given = dict(zip(texts, rewards))
    responses = [Response(i // 4, torch.tensor([1, 2]), torch.zeros(2), finished=True) for i in range(32)]

    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.rollout.group_size = 4
    path = SampleLogger(cfg).log(1, per_response, responses, texts, rewards)
    shown = _articles(open(path, encoding="utf-8").read())
    assert len(shown) == 4
    for text, reward in shown:
        assert reward == given[text], (text, reward, given[text])  # each completion with its own reward
    assert sum(r > 0 for _, r in shown) == 2  # half right, half wrong: 2 of the 3 rewarded are there
    # the wrong ones come from prompts not shown yet, spread: 0 and 5 of 0, 2, 4, 5, 6, 7
    assert [t.split(":")[0] for t, _ in shown] == ["prompt 0 sample 0", "prompt 1 sample 2", "prompt 3 sample 0",
                                                    "prompt 5 sample 0"]
    page = open(path, encoding="utf-8").read()
    assert "the step's 32 rollouts on this process: 3 rewarded, mean reward 0.070" in page  # 2.25 / 32
    assert "shown: 4, 2 rewarded, mean reward 0.438" in page  # (1 + 0.75) / 4
    # the verifier's verdict shown next to the reward agrees with it
    assert re.findall(r'badge (?:ok|bad)">reward [0-9.]+ \u00b7 (\w+)', page) == ["wrong", "correct", "correct", "wrong"]


def test_pick_rollouts_mixes_outcomes_wherever_they_are():
    rewards = [0.0] * 256  # 16 prompts x 16; the three rewarded rollouts sit in prompts 1, 5 and 9
    rewards[1 * 16 + 3] = rewards[5 * 16 + 7] = rewards[9 * 16 + 2] = 1.0
    picked = pick_rollouts(rewards, 16, 4)
    assert [rewards[i] for i in picked] == [0.0, 1.0, 1.0, 0.0] and picked == [0, 19, 87, 144]
    assert sorted(rewards[i] for i in pick_rollouts(rewards, 16, 8)) == [0.0] * 5 + [1.0] * 3  # every right one
    assert pick_rollouts([1.0] * 8, 4, 3) == [0, 1, 4]  # only one kind: that kind, prompts first
    assert pick_rollouts([0, 0, 0, 1], 4, 4) == [0, 1, 2, 3]


def test_index_has_figures_and_pages_link_both_ways(tmp_path):
    run = str(tmp_path / "run")
    rows = make_rows(tmp_path)  # rewards 1, 0, 0, 1
    for step in (1, 50, 20):  # out of order, as after a resume: links still follow step order
        write_sample_page(run, step, rows, batch_rewards=[1.0] * step + [0.0] * 10)
    folder = tmp_path / "run" / "samples"
    page = {s: open(folder / f"step_{s:06d}.html", encoding="utf-8").read() for s in (1, 20, 50)}
    nav = {s: re.search(r"<nav.*?</nav>", p, re.S).group(0) for s, p in page.items()}
    assert 'rel="prev"' not in nav[1] and 'href="step_000020.html" rel="next"' in nav[1]
    assert 'href="step_000001.html" rel="prev"' in nav[20] and 'href="step_000050.html" rel="next"' in nav[20]
    assert 'href="step_000020.html" rel="prev"' in nav[50] and 'rel="next"' not in nav[50]
    assert all('href="index.html"' in n for n in nav.values())
    index = open(folder / "index.html", encoding="utf-8").read()
    table = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr><td>.*?</tr>", index)]
    assert [t[1:] for t in table] == [["1 of 11", "0.091", "2 of 4", "0.500"],
                                      ["20 of 30", "0.667", "2 of 4", "0.500"],
                                      ["50 of 60", "0.833", "2 of 4", "0.500"]]
    assert [re.search(r">step (\d+)<", t[0]).group(1) for t in table] == ["1", "20", "50"]


def test_short_run_gets_its_last_step_page(tmp_path):
    from rlvr.config import Config

    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.trainer.max_steps = 20
    assert [s for s in range(1, 21) if SampleLogger(cfg).due(s)] == [1, 20]  # samples_every=50
    cfg.trainer.max_steps = 120
    assert [s for s in range(1, 121) if SampleLogger(cfg).due(s)] == [1, 50, 100, 120]


def test_training_run_pages_match_its_metrics(qwen25_dir, tmp_path):
    """A real 3-step run with log.samples_every=50: pages for step 1 and the last step, each
    with the step's rewarded count and mean reward equal to what metrics.jsonl logged, linked
    both ways, and listed in the index."""
    import subprocess
    import sys

    from rlvr.sample_pages import read_page_summary
    from rlvr.devtools.make_demo_data import main as make_data

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    make_data(["--out", str(tmp_path / "data"), "--train", "16", "--val", "2"])
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, os.path.join(root, "launch", "train.py"), "--config", os.path.join(root, "recipes", "demo.yaml"),
         f"model.name_or_path={qwen25_dir}", f"data.train_files={tmp_path}/data/train.jsonl", "data.val_files=[]",
         f"output_dir={run}", "trainer.max_steps=3", "trainer.prompts_per_step=4", "rollout.group_size=8",
         "rollout.max_new_tokens=16", "trainer.micro_batch_size=8", "rollout.micro_batch_size=32", "log.progress_bar=false", "log.plots=false",
         "log.samples_every=50", "log.samples_per_step=4", "checkpoint.save_final_model=false", "reward.num_workers=1"],
        capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = {r["step"]: r for r in map(json.loads, open(run / "metrics.jsonl"))}
    folder = run / "samples"
    assert sorted(os.listdir(folder)) == ["index.html", "step_000001.html", "step_000003.html"]
    for step in (1, 3):
        summary = read_page_summary(str(folder / f"step_{step:06d}.html"))
        assert summary["batch"] == 32 and summary["shown"] == 4
        assert summary["batch_mean"] == pytest.approx(metrics[step]["reward/mean"], abs=1e-6)
        assert summary["batch_rewarded"] / 32 == pytest.approx(metrics[step]["reward/correct"], abs=1e-6)
        # half of the shown are rewarded as far as the step has each kind
        rewarded, unrewarded = summary["batch_rewarded"], 32 - summary["batch_rewarded"]
        assert summary["shown_rewarded"] == min(rewarded, 4 - min(unrewarded, 4 - min(rewarded, 2)))
    # not vacuous: the seeded tiny model answers 1 of 32 right at step 1 (the case: a few right
    # answers in a batch of wrong ones), and that one is on the page
    assert read_page_summary(str(folder / "step_000001.html"))["shown_rewarded"] >= 1
    first = open(folder / "step_000001.html", encoding="utf-8").read()
    last = open(folder / "step_000003.html", encoding="utf-8").read()
    assert 'href="step_000003.html" rel="next"' in first and 'href="step_000001.html" rel="prev"' in last
    index = open(folder / "index.html", encoding="utf-8").read()
    assert 'href="step_000001.html"' in index and 'href="step_000003.html"' in index


# --------------------------------------------------------------------------- tool-using rollouts

TOOL_TURNS = [  # (kind, text, tool, status, images as (size, colour))
    ("model", 'The digit is tiny. <tool_call>{"name": "zoom_in", "arguments": {"bbox": [0, 0]}}</tool_call>', None,
     None, []),
    ("observation", "Error: zoom_in needs bbox_2d = [x1, y1, x2, y2] <in 0-1000>", "zoom_in", "error", []),
    ("model", 'Retry. <tool_call>{"name": "zoom_in", "arguments": {"bbox_2d": [0, 0, 500, 500]}}</tool_call>', None,
     None, []),
    ("observation", "Zoomed into [0, 0, 500, 500].", "zoom_in", "ok", [((40, 30), (20, 160, 40)),
                                                                       ((600, 300), (30, 30, 220))]),
    ("model", "Now I can read it: \\boxed{7}.", None, None, []),
]


def tool_response(tokenizer, turns=TOOL_TURNS):
    """A hand-built multi-turn Response: model turns are the tokenizer's ids of their text; an
    observation's ids are arbitrary (the page shows its recorded text), its images PIL images."""
    from PIL import Image

    from rlvr.batch import Turn

    ids, mask, views, images = [], [], [], []
    for kind, text, tool, status, imgs in turns:
        own = tokenizer.encode(text, add_special_tokens=False) if kind == "model" else [5] * (3 + 4 * len(imgs))
        views.append(Turn(kind, len(ids), len(ids) + len(own), tool=tool, status=status,
                          text=text if kind == "observation" else "", images=len(imgs)))
        ids += own
        mask += [1.0 if kind == "model" else 0.0] * len(own)
        images += [Image.new("RGB", size, colour) for size, colour in imgs]
    return Response(0, torch.tensor(ids), torch.zeros(len(ids)), finished=True, loss_mask=torch.tensor(mask),
                    images=images, turns=views, end_reason="answer")


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from rlvr.devtools.make_tiny_model import build_tokenizer

    return build_tokenizer()


def _png(uri: str):
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(raw)).convert("RGB")


def test_tool_rollout_page_shows_each_turn_with_its_images(tmp_path, tiny_tokenizer):
    import html as html_lib

    from rlvr.config import Config

    image = save_image(tmp_path / "prompt.png", (80, 80), (200, 30, 30))
    example = Example(id="t0", question="Which digit?", answer="7", gold=parse_gold("7"), images=[image], source="s")
    response = tool_response(tiny_tokenizer)
    last = tiny_tokenizer.decode(response.answer_ids().tolist(), skip_special_tokens=True)
    assert last == TOOL_TURNS[-1][1]  # what the trainer passes as texts[i]
    cfg = Config(output_dir=str(tmp_path / "run"))
    cfg.rollout.group_size = 1
    path = SampleLogger(cfg).log(1, [example], [response], [last], [1.0], tokenizer=tiny_tokenizer)
    page = open(path, encoding="utf-8").read()
    article = re.search(r"<article.*?</article>", page, re.S).group(0)

    # every turn's text, in order: the model's decoded from its token ids, the observations' as recorded
    positions = [article.find(html_lib.escape(text)) for _, text, *_ in TOOL_TURNS]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions
    # the extracted answer is the verifier's on the last model turn
    assert '<dd class="extracted">7</dd>' in article and "reward 1.00 \u00b7 correct" in article
    # badges: calls (one failed), why it ended, the model's share of the tokens (3 + 11 observation tokens)
    assert "2 tool calls \u00b7 1 failed" in article and "ended: answer" in article
    model_tokens = int(response.loss_mask.sum())
    assert f"{model_tokens + 3 + 11} tokens ({model_tokens} by the model)" in article
    # each observation: its status, colour-coded, and its own images, in order
    blocks = re.findall(r'<div class="turn observation status-(\w+)">(.*?)</div>(?=<div class="turn |</div>)',
                        article, re.S)
    assert [status for status, _ in blocks] == ["error", "ok"]
    assert '<span class="badge bad status">error</span>' in blocks[0][1]
    assert '<span class="badge ok status">ok</span>' in blocks[1][1]
    uris = [re.findall(r'<img src="(data:image/png;base64,[^"]+)"', block) for _, block in blocks]
    assert [len(u) for u in uris] == [0, 2]
    shown = [_png(u) for u in uris[1]]
    assert [im.size for im in shown] == [(40, 30), (448, 224)]  # the second downscaled to THUMB_PIXELS
    assert [im.getpixel((5, 5)) for im in shown] == [(20, 160, 40), (30, 30, 220)]  # each image in its place
    assert "600\u00d7300 px" in blocks[1][1]  # with its original size
    assert len(re.findall(r"<img ", article)) == 3  # and the prompt's image on the left


def test_tool_rollout_without_a_tokenizer_or_with_missing_images(tmp_path, tiny_tokenizer):
    from rlvr.samples import conversation

    response = tool_response(tiny_tokenizer)
    turns, note = conversation(response)  # no tokenizer: model turns are left undecoded, not guessed
    assert [t.text for t in turns if t.kind == "model"] == [None, None, None] and note == ""
    response.images = response.images[:1]  # one of the two images lost
    turns, note = conversation(response, tiny_tokenizer)
    assert [t.images[1] for t in turns if t.kind == "observation" and t.status == "ok"] == [None]
    example = Example(id="t0", question="q?", answer="7", gold=parse_gold("7"), images=[])
    rows = rollout_rows([example], [response], ["\\boxed{7}"], [1.0], group_size=1, n=1)
    page = open(write_sample_page(str(tmp_path), 1, rows), encoding="utf-8").read()
    assert "image 2 of 2 is missing from the response" in page and "not decoded: no tokenizer was given" in page
    response.images = response.images * 3
    assert conversation(response)[1] == "1 observation images belong to no turn"


def test_wandb_columns_for_tool_rollouts(tmp_path, tiny_tokenizer):
    from rlvr.samples import TABLE_COLUMNS, conversation_text, table_columns

    example = Example(id="t0", question="q?", answer="7", gold=parse_gold("7"), images=[])
    single = make_rows(tmp_path)
    assert table_columns(single) == TABLE_COLUMNS  # as before tools
    row = rollout_rows([example], [tool_response(tiny_tokenizer)], ["\\boxed{7}"], [1.0], 1, 1,
                       tokenizer=tiny_tokenizer)[0]
    assert (row.tool_calls, row.end_reason) == (2, "answer")
    assert table_columns(single + [row]) == TABLE_COLUMNS + ["tool_calls", "end_reason", "conversation"]
    text = conversation_text(row)
    assert text.startswith("[model]\nThe digit is tiny.") and "[zoom_in: error, 0 images]\nError:" in text
    assert "[zoom_in: ok, 2 images]\nZoomed" in text and text.endswith("\\boxed{7}.")


def test_wandb_offline_table_with_tool_rows(tmp_path, monkeypatch, tiny_tokenizer):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    example = Example(id="t0", question="q?", answer="7", gold=parse_gold("7"), images=[])
    tool_row = rollout_rows([example], [tool_response(tiny_tokenizer)], ["\\boxed{7}"], [1.0], 1, 1,
                            tokenizer=tiny_tokenizer)[0]
    run = wandb.init(project="rlvr-test", dir=str(tmp_path), mode="offline")
    log_samples_wandb(run, 3, make_rows(tmp_path)[:1] + [tool_row])  # a single-turn row first: None cells
    run_dir = run.dir
    run.finish()
    wandb.teardown()
    table = json.load(open(glob.glob(os.path.join(run_dir, "media", "table", "samples", "rollouts_*.table.json"))[0]))
    assert table["columns"][-3:] == ["tool_calls", "end_reason", "conversation"]
    assert [row[-3:-1] for row in table["data"]] == [[None, None], [2, "answer"]]
    assert "[zoom_in: ok, 2 images]" in table["data"][1][-1]
