"""The synthesis pipeline: config, counts per stage and reason, resume after a kill, shards + merge.

Stand-in backends (below) know each image's squares from the file name, so every count is
computed by hand: six images, "scene-3" has two squares (too few), "scene-5" is not an image,
and the solver gets one query of "scene-1" wrong.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from rlvr.config.loader import load, save
from rlvr.config.problems import ConfigError
from rlvr.synth import pipeline
from rlvr.synth.backends import parse_categories
from rlvr.synth.config import SynthConfig
from rlvr.synth.hopchain import load_config, main, merge_stages
from rlvr.synth.pipeline import Backends, SynthError, image_ids, parse_shard, take_shard, totals
from rlvr.synth.records import Hop, Instance, Query, to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUARES = {"scene-0": 4, "scene-1": 3, "scene-2": 5, "scene-3": 2, "scene-4": 3}  # scene-5: a broken file


def make_images(folder) -> str:
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    for name, n in SQUARES.items():
        sub = "sub" if name == "scene-4" else ""  # one in a subfolder: its id is "sub__scene-4.png"
        Image.new("RGB", (40 * n, 40), "white").save(os.path.join(folder, sub, f"{name}.png"))
    with open(os.path.join(folder, "scene-5.png"), "wb") as f:
        f.write(b"not a png")
    return str(folder)


class StandIns:
    """Backends that count their calls; ``fail_after`` raises in stage 3 after that many images."""

    def __init__(self, fail_after: int | None = None):
        self.calls = collections.Counter()
        self.fail_after = fail_after

    def categorize(self, image, record):
        self.calls["categories", record.image] += 1
        return ["square"]

    def segment(self, image, record, image_id):
        self.calls["instances", record.image] += 1
        n = SQUARES[os.path.basename(record.image)[:-4]]
        return [Instance(f"square-{k + 1}", "square", (40 * k, 0, 40 * k + 40, 40), (0, 0, 0, 0)) for k in range(n)]

    def write(self, image, record, image_id):
        self.calls["queries", record.image] += 1
        if self.fail_after is not None and sum(1 for k in self.calls if k[0] == "queries") > self.fail_after:
            raise KeyboardInterrupt("killed")
        n = len(record.instances)
        hops = [Hop("find", ["square-1"]), Hop("right of it", ["square-2"]), Hop("count", ["square-3"], "multi")]
        queries = [Query("", record.image, f"{image_id}: how many squares?", str(n), hops, ["square-1"], "test"),
                   Query("", record.image, f"{image_id}: how many corners?", str(4 * n), hops, ["square-1"], "test")]
        rejected = collections.Counter({"too_few_hops": 1}) if n == 5 else collections.Counter()
        for k, q in enumerate(queries):
            q.id = f"{image_id}-q{k}"
        return queries, rejected

    def verify(self, image, record, queries):
        self.calls["verify", record.image] += 1
        dropped = collections.Counter()
        if record.image == "scene-1.png":
            dropped["not_unanimous"] += 1  # the solvers disagree on its second query
        if record.image == "scene-2.png":
            dropped["always_solved"] += 1  # the weaker model solves its first every time
        kept = [q for q in queries if q.id not in ("scene-1.png-q1", "scene-2.png-q0")]
        return kept, dropped

    def backends(self) -> Backends:
        return Backends(self.categorize, self.segment, self.write, self.verify, min_instances=3)


def _queries(out) -> list[dict]:
    return [to_dict(q) for q in pipeline.final_queries(str(out))]


def test_config_loads_with_overrides_and_names_unknown_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("queries:\n  per_image: 2\nclients:\n  - {name: solver, backend: scripted}\n"
                      "verify:\n  client: solver\n")
    cfg = load(SynthConfig, str(recipe), ["queries.max_k=5", "instances.min_instances=4"])
    assert (cfg.queries.per_image, cfg.queries.max_k, cfg.instances.min_instances) == (2, 5, 4)
    assert cfg.client("solver").backend == "scripted" and cfg.verify.k == 4
    with pytest.raises(ConfigError, match="Did you mean 'queries.per_image'"):
        load(SynthConfig, str(recipe), ["queries.per_imag=3"])
    with pytest.raises(ConfigError, match="verify.k: expected an integer"):
        load(SynthConfig, str(recipe), ["verify.k=four"])
    problems = load(SynthConfig, str(recipe), ["verify.client=judge", "instances.backend=annotations"]).problems()
    assert any("verify.client='judge' names no client" in p for p in problems)
    assert any("instances.annotations is empty" in p for p in problems)
    with pytest.raises(SynthError, match="queries.min_k=7 must be >= 1 and <= queries.max_k=6"):
        load_config(str(recipe), ["queries.min_k=7", "instances.model=m"])


def test_every_recipe_loads_without_problems():
    folder = os.path.join(ROOT, "recipes", "synth")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
    assert names, "recipes/synth/ has no recipe"
    for name in names:
        text = open(os.path.join(folder, name), encoding="utf-8").read()
        assert text.startswith("#") and "rlvr.synth.hopchain" in text.split("\n\n")[0], name
        assert load(SynthConfig, os.path.join(folder, name)).problems() == [], name


def test_ids_shards_and_category_names():
    assert image_ids(["a/b c.png", "x.png"]) == {"a/b c.png": "a__b_c.png", "x.png": "x.png"}
    clash = image_ids(["a/b.png", "a__b.png"])
    assert len(set(clash.values())) == 2 and all(v.startswith("a__b.png-") for v in clash.values())
    assert parse_shard("1/3") == (1, 3) and take_shard(list("abcdefg"), (1, 3)) == ["b", "e"]
    for bad in ("3/3", "1", "-1/2", "0/0"):
        with pytest.raises(SynthError, match="0 <= i < N"):
            parse_shard(bad)
    text = 'Sure: ["Cups", "a cup", "The Traffic Lights", "2 boxes", "box", "glasses", ""]'
    assert parse_categories(text) == ["cup", "traffic light", "box", "glasses"]
    assert parse_categories("Chair,\n table; chairs") == ["chair", "table"]
    assert parse_categories("[1, 2, 3, 4]", limit=2) == ["1", "2"]


def test_counts_by_stage_and_reason(tmp_path):
    images = make_images(tmp_path / "images")
    stand = StandIns()
    assert pipeline.run(images, str(tmp_path / "out"), stand.backends(), progress=False) == \
        {"categories": 6, "instances": 5, "queries": 4, "verify": 4}
    # 6 images; scene-5 unreadable; scene-3 has 2 < 3 squares; 4 images x 2 queries, 1 rejected
    # in writing (scene-2); scene-1's second query fails verification, scene-2's first is too easy.
    assert totals(str(tmp_path / "out")) == {
        "categories": {"unit": "images", "in": 6, "kept": 5, "dropped": {"unreadable_image": 1}},
        "instances": {"unit": "images", "in": 5, "kept": 4, "dropped": {"too_few_instances": 1}},
        "queries": {"unit": "queries", "in": 9, "kept": 8, "dropped": {"too_few_hops": 1}},
        "verify": {"unit": "queries", "in": 8, "kept": 7, "dropped": {"not_unanimous": 1}},
        "difficulty": {"unit": "queries", "in": 7, "kept": 6, "dropped": {"always_solved": 1}},
    }
    ids = sorted(q.id for q in pipeline.final_queries(str(tmp_path / "out")))
    assert ids == ["scene-0.png-q0", "scene-0.png-q1", "scene-1.png-q0", "scene-2.png-q1",
                   "sub__scene-4.png-q0", "sub__scene-4.png-q1"]


def test_a_killed_run_resumes_without_redoing_an_image(tmp_path):
    images = make_images(tmp_path / "images")
    whole = StandIns()
    pipeline.run(images, str(tmp_path / "whole"), whole.backends(), progress=False)
    killed = StandIns(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(images, str(tmp_path / "out"), killed.backends(), progress=False)
    assert len(os.listdir(tmp_path / "out" / "stages" / "queries")) == 2  # two done, the third never written
    killed.fail_after = None
    pipeline.run(images, str(tmp_path / "out"), killed.backends(), progress=False)
    assert {k: n for k, n in killed.calls.items() if k[0] != "queries"} == \
        {k: n for k, n in whole.calls.items() if k[0] != "queries"}
    # the image killed mid-stage ran again (its file was never written); no other image did
    assert sorted(killed.calls[k] for k in killed.calls if k[0] == "queries") == [1, 1, 1, 2]
    assert _queries(tmp_path / "out") == _queries(tmp_path / "whole")
    assert totals(str(tmp_path / "out")) == totals(str(tmp_path / "whole"))
    again = StandIns()
    assert pipeline.run(images, str(tmp_path / "out"), again.backends(), progress=False) == \
        {"categories": 0, "instances": 0, "queries": 0, "verify": 0} and not again.calls


def test_shards_then_merge_equal_the_unsharded_run(tmp_path):
    images = make_images(tmp_path / "images")
    pipeline.run(images, str(tmp_path / "whole"), StandIns().backends(), progress=False)
    for i in range(2):
        pipeline.run(images, str(tmp_path / f"shard{i}"), StandIns().backends(), shard=(i, 2), progress=False)
    halves = [sorted(os.listdir(tmp_path / f"shard{i}" / "stages" / "categories")) for i in range(2)]
    # sorted: scene-0, scene-1, scene-2, scene-3, scene-5, sub/scene-4: even positions, then odd
    assert halves == [["scene-0.png.json", "scene-2.png.json", "scene-5.png.json"],
                      ["scene-1.png.json", "scene-3.png.json", "sub__scene-4.png.json"]]
    save(SynthConfig(), str(tmp_path / "shard0" / "config.yaml"))  # what a shard run saves; merge reads it
    merge_stages(str(tmp_path / "merged"), [str(tmp_path / "shard0"), str(tmp_path / "shard1")])
    assert _queries(tmp_path / "merged") == _queries(tmp_path / "whole")
    assert totals(str(tmp_path / "merged")) == totals(str(tmp_path / "whole"))
    with pytest.raises(SynthError, match="no readable run.json"):
        merge_stages(str(tmp_path / "m2"), [str(tmp_path / "shard0"), str(tmp_path / "images")])


def test_bad_inputs_get_one_message_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    recipe = os.path.join(ROOT, "recipes", "synth", "demo.yaml")
    cases = [(["--images", str(tmp_path / "nope")], "no such folder"),
             (["--images", str(tmp_path / "empty")], "no images in it"),
             (["--images", str(tmp_path), "--shard", "2/2"], "0 <= i < N"),
             (["--images", str(tmp_path), "queries.min_kk=2"], "Did you mean 'queries.min_k'")]
    for args, message in cases:
        assert main(["--config", recipe, "--out", str(tmp_path / "out"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") <= 3, err
    proc = subprocess.run([sys.executable, "-m", "rlvr.synth.hopchain", "merge", "--out", str(tmp_path / "m"),
                           str(tmp_path / "empty")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "no readable run.json" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- end to end, with the stage modules


def rendered(tmp_path, n=6):
    """``n`` rendered scenes; scene_00001 keeps only two instances in the COCO JSON; one broken file."""
    from rlvr.synth.scenes import render_scenes

    folder = tmp_path / "scenes"
    render_scenes(str(folder), n, seed=3)
    coco = json.loads((folder / "annotations.json").read_text())
    rows = [a for a in coco["annotations"] if a["image_id"] == 2]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 2] + rows[:2]
    (folder / "annotations.json").write_text(json.dumps(coco))
    (folder / "scene_broken.png").write_bytes(b"\x89PNG but not really")
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(f"categories: {{backend: annotations}}\n"
                      f"instances: {{backend: annotations, annotations: {folder / 'annotations.json'}}}\n"
                      "queries: {writer: programmatic, per_image: 2}\n"
                      "clients: [{name: solver, backend: scripted, script: oracle}]\n"
                      "verify: {client: solver, k: 4}\noutput: {page_samples: 4}\n")
    return str(folder), str(recipe)


def test_rendered_scenes_end_to_end_with_a_solver_that_disagrees_once(tmp_path, monkeypatch):
    from rlvr.synth import backends

    images, recipe = rendered(tmp_path)
    oracle, asked = backends._Oracle.__call__, []

    def first_request_wrong_once(self, request):
        asked.append(request)
        replies = oracle(self, request)
        return ["\\boxed{999}"] + replies[1:] if len(asked) == 1 else replies

    monkeypatch.setattr(backends._Oracle, "__call__", first_request_wrong_once)
    out = tmp_path / "out"
    assert main(["--config", recipe, "--images", images, "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    # 7 files, one broken; scene_00001 has 2 instances; 5 images x 2 chains; 1 of 4 answers wrong once
    assert report["stages"] == {
        "categories": {"unit": "images", "in": 7, "kept": 6, "dropped": {"unreadable_image": 1}},
        "instances": {"unit": "images", "in": 6, "kept": 5, "dropped": {"too_few_instances": 1}},
        "queries": {"unit": "queries", "in": 10, "kept": 10, "dropped": {}},
        "verify": {"unit": "queries", "in": 10, "kept": 9, "dropped": {"solver_disagrees": 1}},
        "difficulty": {"unit": "queries", "in": 9, "kept": 9, "dropped": {}},
    }
    assert len(asked) == 10 and all(r.n == 4 for r in asked)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    written = {q.id: q for q in pipeline.final_queries(str(out), "queries")}
    assert len(rows) == 9 and "scene_00000.png-q0" not in {r["id"] for r in rows}
    for row in rows:
        assert row["answer"] == written[row["id"]].answer and row["source"] == "hopchain"
        assert row["provenance"]["verify"]["answers"] == [f"\\boxed{{{row['answer']}}}"] * 4
        assert os.path.isfile(os.path.join(out, row["images"][0]))
    assert (out / "page.html").stat().st_size > 1000 and (out / "config.yaml").exists()
    assert "solver_disagrees" in (out / "report.txt").read_text()


def test_annotators_round_trip_stops_after_stage_3_and_resumes(tmp_path, capsys):
    images, recipe = rendered(tmp_path, n=4)
    out, sheet = tmp_path / "out", tmp_path / "annotate.jsonl"
    args = ["--config", recipe, "--images", images, "--out", str(out), "--no-progress", "verify.client=",
            f"verify.export_file={sheet}", f"verify.import_file={sheet}", "verify.k=2"]
    assert main(args) == 2
    assert "exported 6 queries for annotators" in capsys.readouterr().err
    assert not (out / "stages" / "verify").exists() or not os.listdir(out / "stages" / "verify")
    answers = {q.id: q.answer for q in pipeline.final_queries(str(out), "queries")}
    rows = [json.loads(line) for line in sheet.read_text().splitlines()]
    for k, row in enumerate(rows):  # the first row's second annotator gives another number
        row["answer_1"], row["answer_2"] = answers[row["id"]], "0.5" if k == 0 else answers[row["id"]]
    sheet.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 0
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages["verify"] == {"unit": "queries", "in": 6, "kept": 5, "dropped": {"solver_disagrees": 1}}


def test_vlm_categories_and_writer_through_scripted_clients(tmp_path):
    """Stages 1 and 3 with VLM clients (scripted replies from files): names parsed, replies rejected by reason."""
    images, recipe = rendered(tmp_path, n=2)  # scene_00000 (kept) and scene_00001 (2 instances: dropped)
    lists, writes = tmp_path / "lists.json", tmp_path / "writes.json"
    lists.write_text(json.dumps(['["Circles", "a square"]', "nothing here I can name"]))
    writes.write_text(json.dumps(["no JSON at all", '{"question": "How many?", "hops": [], "answer": "2"}']))
    out = tmp_path / "out"
    args = ["--config", recipe, "--images", images, "--out", str(out), "--no-progress", "categories.backend=vlm",
            "categories.client=lister", "queries.writer=vlm", "queries.client=writer",
            "clients=[{name: lister, backend: scripted, script: " + str(lists) + "}, "
            "{name: writer, backend: scripted, script: " + str(writes) + "}]", "verify.enabled=false"]
    assert main(args) == 0
    record = pipeline.read_stage(str(out), "categories", "scene_00000.png")["record"]
    assert record["categories"] == ["circle", "square"]
    stages = json.loads((out / "report.json").read_text())["stages"]
    assert stages["categories"]["kept"] == 2  # "nothing here I can name" is one name to the parser; B finds none
    assert stages["queries"] == {"unit": "queries", "in": 2, "kept": 0,
                                 "dropped": {"too_few_hops": 1, "unparseable": 1}}


def test_bad_annotations_and_models_get_one_message(tmp_path, capsys):
    images, recipe = rendered(tmp_path, n=1)
    (tmp_path / "bad.json").write_text('{"not": "coco"}')
    base = ["--config", recipe, "--images", images, "--no-progress"]
    cases = [([f"instances.annotations={tmp_path / 'bad.json'}"], "instances.annotations="),
             ([f"instances.annotations={tmp_path / 'none.json'}"], "no such file"),
             (["difficulty.enabled=true", "difficulty.client=weak",
               "clients=[{name: solver, backend: scripted}, {name: weak, backend: engine, model: " +
               str(tmp_path / "no-model") + "}]"], "clients[weak]")]
    for k, (extra, message) in enumerate(cases):
        assert main([*base, "--out", str(tmp_path / f"out{k}"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_help_config_lists_every_key_with_its_help(capsys):
    assert main(["--help-config"]) == 0
    text = capsys.readouterr().out
    assert "  verify.k = 4  # independent solver samples per query" in text
    assert "  api_key_env = null  # openai: environment variable holding the API key" in text
    from rlvr.config.loader import all_keys

    assert all(f"  {key} = " in text for key in all_keys(SynthConfig))
