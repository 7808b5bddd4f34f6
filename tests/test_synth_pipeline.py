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
        kept = [q for q in queries if q.id != "scene-1.png-q1"]  # the solvers disagree on this one
        return kept, collections.Counter({"not_unanimous": len(queries) - len(kept)})

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
    text = 'Sure: ["Cups", "a cup", "The Traffic Light", "2 dogs", "dog", "cup"]'
    assert parse_categories(text) == ["cup", "traffic light", "dog"]
    assert parse_categories("Chair,\n table; chairs") == ["chair", "table"]


def test_counts_by_stage_and_reason(tmp_path):
    images = make_images(tmp_path / "images")
    stand = StandIns()
    assert pipeline.run(images, str(tmp_path / "out"), stand.backends(), progress=False) == \
        {"categories": 6, "instances": 5, "queries": 4, "verify": 4}
    # 6 images; scene-5 unreadable; scene-3 has 2 < 3 squares; 4 images x 2 queries, 1 rejected
    # in writing (scene-2); scene-1's second query fails verification.
    assert totals(str(tmp_path / "out")) == {
        "categories": {"unit": "images", "in": 6, "kept": 5, "dropped": {"unreadable_image": 1}},
        "instances": {"unit": "images", "in": 5, "kept": 4, "dropped": {"too_few_instances": 1}},
        "queries": {"unit": "queries", "in": 9, "kept": 8, "dropped": {"too_few_hops": 1}},
        "verify": {"unit": "queries", "in": 8, "kept": 7, "dropped": {"not_unanimous": 1}},
        "difficulty": {"unit": "queries", "in": 7, "kept": 7, "dropped": {}},
    }
    ids = sorted(q.id for q in pipeline.final_queries(str(tmp_path / "out")))
    assert ids == ["scene-0.png-q0", "scene-0.png-q1", "scene-1.png-q0", "scene-2.png-q0", "scene-2.png-q1",
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
