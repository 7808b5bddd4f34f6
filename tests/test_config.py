"""Tests for rlvr.config: defaults, YAML merge, overrides, explained errors, validation, round-trip."""

import dataclasses
import textwrap

import pytest

from rlvr.config import (
    LOSS_NAMES,
    Config,
    ConfigError,
    RewardFunctionConfig,
    all_keys,
    config_to_dict,
    load_config,
    parse_cli,
    save_config,
    check_config,
)

VALID = ["model.name_or_path=tiny-vlm", "data.train_files=train.jsonl"]


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# ---------------------------------------------------------------- defaults and keys


def test_defaults():
    cfg = load_config(None, [])
    assert cfg == Config()
    assert cfg.rollout.group_size == 8
    assert cfg.trainer.lr == 1e-6 and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.adam_betas == [0.9, 0.999]
    assert cfg.data.train_files == [] and cfg.data.system_prompt is None
    assert cfg.data.prompt_template.endswith("in \\boxed{}.")
    assert cfg.reward.functions == [RewardFunctionConfig("rlvr.rewards:numeric_reward", 1.0)]
    assert cfg.algorithm.loss == "sapo" and cfg.algorithm.aggregation is None
    assert LOSS_NAMES == ("sapo", "grpo", "dapo", "dr_grpo", "gspo", "cispo", "sft")


def test_defaults_are_not_shared_between_instances():
    a, b = Config(), Config()
    a.data.train_files.append("x")
    a.reward.functions[0].weight = 3.0
    assert b.data.train_files == [] and b.reward.functions[0].weight == 1.0


def test_all_keys_and_dict():
    keys = all_keys()
    assert "trainer.lr" in keys and "reward.functions" in keys and "output_dir" in keys
    assert "trainer" not in keys  # sections are not leaves
    assert len(keys) == len(set(keys))
    d = config_to_dict(Config())
    assert list(d) == ["output_dir", "resume", "model", "data", "rollout", "reward", "algorithm", "trainer",
                       "checkpoint", "eval", "log", "tools"]
    assert d["reward"]["functions"] == [{"name": "rlvr.rewards:numeric_reward", "weight": 1.0}]


# ---------------------------------------------------------------- YAML and overrides


def test_yaml_merge_keeps_other_defaults(tmp_path):
    path = write(tmp_path, """
        model:
          name_or_path: tiny-vlm
        trainer:
          lr: 1e-5        # PyYAML reads this as a string; it must still become a float
          max_steps: 3
        rollout:
    """)
    cfg = load_config(path, [])
    assert cfg.model.name_or_path == "tiny-vlm" and cfg.model.dtype == "auto"
    assert cfg.trainer.lr == 1e-5 and cfg.trainer.max_steps == 3
    assert cfg.trainer.micro_batch_size == 8 and cfg.rollout == Config().rollout


def test_override_beats_yaml_and_later_override_wins(tmp_path):
    path = write(tmp_path, "trainer:\n  lr: 1.0e-5\n  seed: 1\n")
    cfg = load_config(path, ["trainer.lr=3e-6", "trainer.seed=2", "trainer.seed=7"])
    assert cfg.trainer.lr == 3e-6 and cfg.trainer.seed == 7


def test_override_values_parsed_as_yaml():
    cfg = load_config(None, ["log.wandb=true", "data.max_rows=10", "log.run_name=null",
                             "trainer.adam_betas=[0.8,0.99]", "model.name_or_path=123",
                             "data.system_prompt=You are: careful", "algorithm.aggregation=token-mean"])
    assert cfg.log.wandb is True and cfg.data.max_rows == 10 and cfg.log.run_name is None
    assert cfg.trainer.adam_betas == [0.8, 0.99]
    assert cfg.model.name_or_path == "123"  # a str field keeps the text typed
    assert cfg.data.system_prompt == "You are: careful"
    assert cfg.algorithm.aggregation == "token-mean"


def test_section_override_with_mapping_merges():
    cfg = load_config(None, ["model={name_or_path: m, dtype: float16}"])
    assert cfg.model.name_or_path == "m" and cfg.model.dtype == "float16"
    assert cfg.model.attn_implementation == "sdpa"


@pytest.mark.parametrize("value, expected", [
    ("a.jsonl", ["a.jsonl"]),
    ("[a.jsonl,b.jsonl]", ["a.jsonl", "b.jsonl"]),
    ("[]", []),
    ("2024", ["2024"]),
])
def test_list_of_str_from_override(value, expected):
    assert load_config(None, [f"data.train_files={value}"]).data.train_files == expected


def test_list_of_str_from_yaml(tmp_path):
    one = load_config(write(tmp_path, "data:\n  train_files: a.jsonl\n", "one.yaml"), [])
    many = load_config(write(tmp_path, "data:\n  val_files: [a.jsonl, b.jsonl]\n", "many.yaml"), [])
    assert one.data.train_files == ["a.jsonl"] and many.data.val_files == ["a.jsonl", "b.jsonl"]


def test_unknown_key_from_yaml_names_closest_key_and_file(tmp_path):
    path = write(tmp_path, "rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, [])
    msg = str(e.value)
    assert "'rollout.group_sise'" in msg and f"from {path}:2" in msg
    assert "Did you mean 'rollout.group_size'" in msg


@pytest.mark.parametrize("override, suggestion", [
    ("rollout.group_sise=4", "rollout.group_size"),
    ("rolout.group_size=4", "rollout.group_size"),  # typo in the section
    ("rollout.lr=1e-6", "trainer.lr"),  # right name, wrong section
    ("trainer.zzz=1", None),  # nothing close: list the valid keys
])
def test_unknown_key_from_override(override, suggestion):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{override.split('=')[0]}'" in msg and "(from command line)" in msg
    if suggestion:
        assert f"Did you mean '{suggestion}'" in msg or f"'{suggestion}'" in msg.split("Did you mean")[1]
    else:
        assert "Valid keys under 'trainer'" in msg and "lr" in msg


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'trainr'.*Did you mean 'trainer'"):
        load_config(write(tmp_path, "trainr:\n  lr: 1.0\n"), [])


@pytest.mark.parametrize("override, expected", [
    ("trainer.lr=abc", "trainer.lr: expected a float, got 'abc' (str) from command line"),
    ("trainer.max_steps=1.5", "trainer.max_steps: expected an integer, got 1.5 (float)"),
    ("trainer.max_steps=true", "trainer.max_steps: expected an integer, got True (bool)"),
    ("log.wandb=1", "log.wandb: expected a boolean (true/false), got 1 (int)"),
    ("trainer.lr=true", "trainer.lr: expected a float, got True (bool)"),
    ("rollout.group_size=null", "rollout.group_size: expected an integer, got None"),
    ("trainer.adam_betas=[0.9,x]", "trainer.adam_betas[1]: expected a float, got 'x'"),
    ("trainer.adam_betas=0.9", "trainer.adam_betas: expected a list of floats, got 0.9"),
    ("model=3", "model: expected a mapping, got 3 (int)"),
])
def test_type_errors_explain_themselves(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)


def test_type_error_from_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "trainer:\n  seed: 1\n  warmup_steps: ten\n")
    with pytest.raises(ConfigError, match=rf"trainer.warmup_steps: expected an integer, got 'ten' \(str\) from {path}:3"):
        load_config(path, [])


def test_ints_accepted_for_floats_and_none_only_for_optional(tmp_path):
    cfg = load_config(write(tmp_path, "trainer:\n  lr: 1\ndata:\n  max_rows: null\n  system_prompt: ~\n"), [])
    assert cfg.trainer.lr == 1.0 and isinstance(cfg.trainer.lr, float)
    assert cfg.data.max_rows is None and cfg.data.system_prompt is None
    with pytest.raises(ConfigError, match="only allowed for optional fields"):
        load_config(write(tmp_path, "model:\n  dtype: null\n", "b.yaml"), [])


def test_empty_yaml_and_bad_top_level(tmp_path):
    assert load_config(write(tmp_path, "", "empty.yaml"), []) == Config()
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n", "list.yaml"), [])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1\n", "broken.yaml"), [])
    with pytest.raises(ConfigError, match="Cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"), [])


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "trainer:\n  lr: 1.0\n  lr: 2.0\n")
    with pytest.raises(ConfigError, match=rf"Duplicate key 'lr' in {path}:3 \(first at line 2\)"):
        load_config(path, [])


@pytest.mark.parametrize("override", ["trainer.lr", "=3", "trainer..lr=3", "trainer.=1"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match=r"Malformed override.*e\.g\. trainer\.lr=1e-6"):
        load_config(None, [override])


def test_override_into_a_leaf_is_explained():
    with pytest.raises(ConfigError, match=r"'trainer.lr' is a float, not a section"):
        load_config(None, ["trainer.lr.x=1"])
    with pytest.raises(ConfigError, match=r"'reward.functions' is a list of mappings"):
        load_config(None, ["reward.functions.0.weight=2"])


# ---------------------------------------------------------------- lists of reward functions


def test_reward_functions_from_yaml(tmp_path):
    path = write(tmp_path, """
        reward:
          functions:
            - name: rlvr.rewards:numeric_reward
            - {name: "my.mod:fmt", weight: 0.5}
    """)
    cfg = load_config(path, [])
    assert cfg.reward.functions == [RewardFunctionConfig("rlvr.rewards:numeric_reward", 1.0),
                                    RewardFunctionConfig("my.mod:fmt", 0.5)]
    cfg = load_config(path, ["reward.functions=[{name: 'a:b', weight: 2}]"])
    assert cfg.reward.functions == [RewardFunctionConfig("a:b", 2.0)]


def test_reward_function_typo_and_missing_name(tmp_path):
    path = write(tmp_path, "reward:\n  functions:\n    - name: a:b\n    - name: c:d\n      wieght: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, [])
    assert "'reward.functions[1].wieght'" in str(e.value) and f"{path}:5" in str(e.value)
    assert "Did you mean 'reward.functions[1].weight'" in str(e.value)
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].name is required"):
        load_config(write(tmp_path, "reward:\n  functions:\n    - weight: 2\n", "b.yaml"), [])
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].weight: expected a float"):
        load_config(None, ["reward.functions=[{name: 'a:b', weight: heavy}]"])
    with pytest.raises(ConfigError, match=r"reward.functions\[0\]: expected a mapping"):
        load_config(None, ["reward.functions=[a:b]"])


# ---------------------------------------------------------------- validate


def test_valid_config_passes():
    check_config(load_config(None, VALID))


@pytest.mark.parametrize("overrides, field_name", [
    (["model.name_or_path="], "model.name_or_path"),
    (["data.train_files=[]"], "data.train_files"),
    (["data.train_files="], "data.train_files"),  # [""]: an empty path is no dataset
    (["rollout.group_size=1"], "rollout.group_size"),
    (["trainer.num_minibatches=3"], "trainer.num_minibatches"),
    (["trainer.micro_batch_size=3"], "trainer.micro_batch_size"),
    (["algorithm.loss=ppo"], "algorithm.loss"),
    (["algorithm.aggregation=mean"], "algorithm.aggregation"),
    (["algorithm.tau_pos=0"], "algorithm.tau_pos"),
    (["algorithm.tau_neg=-1"], "algorithm.tau_neg"),
    (["rollout.temperature=0"], "rollout.temperature"),
    (["rollout.top_p=0"], "rollout.top_p"),
    (["rollout.top_p=1.5"], "rollout.top_p"),
    (["rollout.max_new_tokens=0"], "rollout.max_new_tokens"),
    (["trainer.lr=-1e-6"], "trainer.lr"),
    (["trainer.lr_schedule=linear"], "trainer.lr_schedule"),
    (["trainer.warmup_steps=-1"], "trainer.warmup_steps"),
    (["data.min_pixels=2000000"], "data.min_pixels"),
    (["data.prompt_template=Answer: {q}"], "data.prompt_template"),
    (["reward.answer_extraction=regex"], "reward.answer_extraction"),
    (["reward.functions=[{name: rlvr.rewards.numeric_reward}]"], "reward.functions[0].name"),
    (["reward.functions=[{name: ':f'}]"], "reward.functions[0].name"),
    (["reward.functions=[]"], "reward.functions"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
    (["model.dtype=fp16"], "model.dtype"),
    (["model.attn_implementation=flash"], "model.attn_implementation"),
    (["data.format=csv"], "data.format"),
    (["rollout.top_k=-1"], "rollout.top_k"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.min_lr_ratio=2"], "trainer.min_lr_ratio"),
    (["trainer.adam_betas=[0.9]"], "trainer.adam_betas"),
    (["trainer.prompts_per_step=0"], "trainer.prompts_per_step"),
    (["checkpoint.every_steps=-1"], "checkpoint.every_steps"),
    (["trainer.micro_batch_tokens=0"], "trainer.micro_batch_tokens"),
])
def test_validate_rule(overrides, field_name):
    cfg = load_config(None, VALID + overrides)
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    msg = str(e.value)
    assert "Invalid config (1 problem):" in msg and f"1. {field_name}" in msg


def test_validate_batch_messages_say_the_numbers():
    with pytest.raises(ConfigError) as e:
        check_config(load_config(None, VALID + ["trainer.prompts_per_step=4", "trainer.num_minibatches=3"]))
    assert "4 * 8 = 32" in str(e.value) and "[1, 2, 4, 8, 16]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_config(load_config(None, VALID + ["trainer.num_minibatches=2", "trainer.micro_batch_size=5"]))
    assert "64 / 2 = 32 sequences" in str(e.value) and "[1, 2, 4, 8, 16]" in str(e.value)
    check_config(load_config(None, VALID + ["trainer.num_minibatches=4", "trainer.micro_batch_size=16"]))
    # A token budget replaces micro_batch_size, so its divisibility no longer matters.
    check_config(load_config(None, VALID + ["trainer.micro_batch_size=5", "trainer.micro_batch_tokens=16384"]))


def test_validate_collects_all_problems():
    with pytest.raises(ConfigError) as e:
        check_config(Config())
    msg = str(e.value)
    assert "Invalid config (2 problems):" in msg
    assert "1. model.name_or_path" in msg and "2. data.train_files" in msg


# ---------------------------------------------------------------- save / load round trip


def test_round_trip(tmp_path):
    cfg = load_config(None, VALID + [
        "trainer.lr=3e-7", "log.tags=[a,b]", "data.system_prompt=Line one.\nLine two",
        "reward.functions=[{name: 'a:b', weight: 0.5}, {name: 'c.d:e'}]", "model.name_or_path=123",
        "log.run_name=yes", "data.max_rows=5", "output_dir=runs/x y",
    ])
    cfg.data.system_prompt = "Line one.\nLine two\n"  # a real newline, as from YAML
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    text = path.read_text()
    assert text.index("output_dir") < text.index("model:") < text.index("log:")  # definition order
    assert "prompt_template: |" in text  # multi-line strings stay readable
    back = load_config(str(path), [])
    assert back == cfg and dataclasses.asdict(back) == dataclasses.asdict(cfg)
    save_config(Config(), tmp_path / "default.yaml")
    assert load_config(str(tmp_path / "default.yaml"), []) == Config()


# ---------------------------------------------------------------- parse_cli


@pytest.mark.parametrize("argv, expected", [
    ([], (None, [])),
    (["--config", "r.yaml"], ("r.yaml", [])),
    (["--config=r.yaml", "trainer.lr=1e-6"], ("r.yaml", ["trainer.lr=1e-6"])),
    (["a.b=1", "--config", "r.yaml", "c.d=[x,y]"], ("r.yaml", ["a.b=1", "c.d=[x,y]"])),
    (["data.system_prompt=a=b"], (None, ["data.system_prompt=a=b"])),
])
def test_parse_cli(argv, expected):
    assert parse_cli(argv) == expected


@pytest.mark.parametrize("argv, match", [
    (["--foo"], "'--foo'"),
    (["trainer.lr"], "'trainer.lr'"),
    (["--lr=3"], "'--lr=3'"),
    (["--config"], "--config needs a path"),
    (["--config", "--x"], "--config needs a path"),
    (["--config="], "--config needs a path"),
    (["--config", "a.yaml", "--config=b.yaml"], "twice"),
])
def test_parse_cli_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_cli(argv)


def test_flash_attention_needs_its_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    cfg = load_config(None, VALID + ["model.attn_implementation=flash_attention_2"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ConfigError, match="needs the flash_attn package"):
        check_config(cfg)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    check_config(cfg)


# ---------------------------------------------------------------- the process count


def test_validate_checks_the_split_over_processes():
    """prompts_per_step=3 is fine alone and on 3 processes, wrong on 2: validate says so before any model loads."""
    cfg = load_config(None, VALID + ["trainer.prompts_per_step=3", "rollout.group_size=4", "trainer.micro_batch_size=4"])
    check_config(cfg)
    check_config(cfg, num_processes=3)  # 1 prompt x 4 = 4 sequences per rank: one micro-batch of 4
    with pytest.raises(ConfigError) as e:
        check_config(cfg, num_processes=2)
    assert "1. trainer.prompts_per_step=3 does not divide among 2 processes" in str(e.value)
    assert "trainer.prompts_per_step in [2, 4]" in str(e.value)
    # divides, but each rank's 2 prompts x 4 = 8 sequences do not fill micro-batches of 3
    cfg = load_config(None, VALID + ["trainer.prompts_per_step=4", "rollout.group_size=4", "trainer.micro_batch_size=16"])
    check_config(cfg)
    with pytest.raises(ConfigError, match=r"each of the 2 processes gets 2 prompts x 4 = 8 sequences per step, which "
                                          r"trainer.num_minibatches=1 x trainer.micro_batch_size=16 does not divide"):
        check_config(cfg, num_processes=2)


# ---------------------------------------------------------------- help text


def test_every_key_has_help_text_and_help_config_shows_defaults():
    from rlvr.config.help import _join, _sections, field_help, help_config

    for name, cls in _sections().items():
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            if _join(name, f.name) in _sections():
                continue  # a section, not a key
            assert helps.get(f.name, "").strip(), f"{name}.{f.name} has no comment to show in --help-config"
    text = help_config("trainer")
    assert "  trainer.lr = 1e-06\n      peak learning rate\n" in text
    assert "  trainer.micro_batch_tokens = null\n      Token budget per forward/backward" in text
    assert "data.question_key" not in text
    assert help_config("data.question_key").splitlines()[:3] == [
        "data:", "  data.question_key = question", "      row column holding the question text"]
    assert "model.lora.rank = 0" in help_config("model")  # a section includes its subsections
    assert '  reward.functions = [{name: \'rlvr.rewards:numeric_reward\', weight: 1.0}]' in help_config("reward")
    everything = help_config()
    assert all(f"  {k} = " in everything for k in all_keys())
    with pytest.raises(ConfigError, match="no section or key 'trainr'. Did you mean 'trainer'"):
        help_config("trainr")
