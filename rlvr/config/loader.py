"""Reading a config tree: YAML recipe, then dotted command-line overrides, into typed dataclasses.

Generic over the root dataclass (``load(root, path, overrides)``): defaults from the
dataclasses, merged with a YAML file (nested mapping, only the keys it changes), merged with
``a.b=value`` overrides in order, checked against the annotations on the way. Unknown keys
are an error naming the closest valid key; type errors say what was expected and where the
value came from (``file.yaml:12`` or the command line).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Sequence

import yaml

from rlvr.config.schema import ConfigError

COMMAND_LINE = "command line"  # the source named in errors about `key=value` overrides


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
    return tp, False


_SCALAR_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a float", str: "a string"}


def _describe(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    if optional:
        return f"{_describe(inner)} or null"
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if item is str:
            return "a list of strings (or a single string)"
        if dataclasses.is_dataclass(item):
            return f"a list of mappings with keys {[f.name for f in dataclasses.fields(item)]}"
        return f"a list of {_SCALAR_NAMES[item].split(' ', 1)[1]}s"
    return _SCALAR_NAMES.get(tp, "a mapping")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _paths(cls: type, prefix: str = "", sections: bool = False) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp, path = _hints(cls)[f.name], _join(prefix, f.name)
        if dataclasses.is_dataclass(tp):
            out += ([path] if sections else []) + _paths(tp, path, sections)
        else:
            out.append(path)
    return out


def all_keys(root: type) -> list[str]:
    """Every dotted leaf key of ``root``, e.g. 'trainer.lr' (lists such as 'reward.functions' are leaves)."""
    return _paths(root)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain nested dicts and lists, in field order."""
    return dataclasses.asdict(cfg)


def _at(where: str, line: int | None) -> str:
    """Source of one value: 'file.yaml:12' when the YAML loader recorded the line of its key."""
    return f"{where}:{line}" if line else where


def _unknown_key(root: type, full: str, name: str, prefix: str, siblings: list[str], where: str) -> ConfigError:
    every = _paths(root, sections=True)
    guesses = [_join(prefix, s) for s in difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)]
    guesses += difflib.get_close_matches(full, all_keys(root), n=3, cutoff=0.85)
    # the right name under the wrong section, e.g. 'rollout.lr' -> 'trainer.lr'
    leaf = full.rsplit(".", 1)[-1]
    guesses += [k for k in every if difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() >= 0.85]
    guesses = list(dict.fromkeys(guesses))[:3]
    msg = f"Unknown config key '{full}' (from {where})."
    if guesses:
        return ConfigError(msg + " Did you mean " + " or ".join(f"'{g}'" for g in guesses) + "?")
    section = f"under '{prefix}'" if prefix else "at the top level"
    return ConfigError(f"{msg} Valid keys {section}: {', '.join(siblings)}.")


def _type_error(key: str, tp: Any, value: Any, where: str, line: int | None) -> ConfigError:
    got = f"{value!r} ({type(value).__name__})"
    msg = f"{key}: expected {_describe(tp)}, got {got} from {_at(where, line)}."
    if value is None:
        msg += " null is only allowed for optional fields; give a value or drop the key to keep the default."
    elif isinstance(value, bool):
        msg += " true/false is not a number here; write the number you mean."
    return ConfigError(msg)


def _coerce(root: type, value: Any, tp: Any, key: str, where: str, line: int | None = None) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless.

    `where` names the source (a file or COMMAND_LINE); `line` is the line of the value's key.
    """
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise _type_error(key, tp, value, where, line)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if item is str and isinstance(value, str):
            return [value]  # `train_files: a.jsonl` means a list of one
        if not isinstance(value, list):
            raise _type_error(key, tp, value, where, line)
        return [_coerce(root, v, item, f"{key}[{i}]", where, line) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise _type_error(key, tp, value, where, line)
        return _build(root, inner, value, key, where)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if inner is bool and isinstance(value, bool):
        return value
    if inner is int and number and isinstance(value, int):
        return value
    if inner is float and number:
        return float(value)
    if inner is float and isinstance(value, str):
        try:
            return float(value)  # PyYAML reads 1e-6 (no dot) as a string
        except ValueError:
            pass
    if inner is str and (isinstance(value, str) or number):
        return value if isinstance(value, str) else str(value)
    raise _type_error(key, tp, value, where, line)


def _check_keys(root: type, cls: type, mapping: dict, prefix: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        if key not in names:
            full = _join(prefix, str(key))
            raise _unknown_key(root, full, str(key), prefix, names, _at(where, getattr(key, "line", None)))


def _build(root: type, cls: type, mapping: dict, prefix: str, where: str) -> Any:
    """A fresh `cls` from defaults plus `mapping` (used for list items such as reward functions)."""
    _check_keys(root, cls, mapping, prefix, where)
    kwargs = {str(k): _coerce(root, v, _hints(cls)[k], _join(prefix, k), where, getattr(k, "line", None))
              for k, v in mapping.items()}
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and f.name not in kwargs:
            raise ConfigError(f"{_join(prefix, f.name)} is required but missing (from {where}).")
    return cls(**kwargs)


def _merge(root: type, obj: Any, mapping: dict, prefix: str, where: str) -> None:
    """Merge a nested mapping into the dataclass `obj` in place; sections merge, leaves replace."""
    _check_keys(root, type(obj), mapping, prefix, where)
    for key, value in mapping.items():
        name, current = str(key), getattr(obj, key)
        if dataclasses.is_dataclass(current) and value is None:
            continue  # an empty section (`trainer:` with every child commented out) changes nothing
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _merge(root, current, value, _join(prefix, name), where)
        else:
            line = getattr(key, "line", None)
            setattr(obj, name, _coerce(root, value, _hints(type(obj))[name], _join(prefix, name), where, line))


# ---------------------------------------------------------------- YAML and the command line


class _Key(str):
    """A mapping key that remembers its line in the YAML file, for error messages."""

    line: int


class _Loader(yaml.SafeLoader):
    path = "<yaml>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)  # resolve `<<:` merge keys first
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str):
            key = _Key(key)
            key.line = key_node.start_mark.line + 1
            if key in out:  # YAML itself would silently keep only the last value
                first = next(k for k in out if k == key)
                raise ConfigError(
                    f"Duplicate key '{key}' in {loader.path}:{key.line} (first at line {first.line}). "
                    "YAML keeps only the last one, so one of them would be silently ignored; remove one."
                )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"Cannot read config file {path!r}: {e.strerror}.") from None
    loader = _Loader(text)
    loader.path = path
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML:\n{e}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}  # an empty recipe changes nothing
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must be a mapping of sections (e.g. 'trainer:\\n  lr: 1.0e-6'), "
            f"got {type(data).__name__} at the top level."
        )
    return data


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse an override's text as YAML; a field of strings keeps the exact text typed."""
    inner, optional = _optional_inner(tp)
    stringy = inner is str or inner == list[str]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        if stringy:
            return raw
        raise ConfigError(f"{key}: cannot parse {raw!r} from {COMMAND_LINE} as a YAML value ({e}).") from None
    if stringy and not isinstance(value, (str, list)) and not (value is None and optional):
        return raw  # model.name_or_path=123 means the string "123"
    return value


def _apply_override(cfg: Any, text: str) -> None:
    key, eq, raw = text.partition("=")
    key, parts = key.strip(), key.strip().split(".")
    if not eq or not all(parts):
        raise ConfigError(
            f"Malformed override {text!r}: expected key=value with a dotted key, "
            "e.g. trainer.lr=1e-6 or data.train_files=[a.jsonl,b.jsonl]."
        )
    obj, prefix = cfg, ""
    for i, name in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if name not in names:
            raise _unknown_key(type(cfg), key, name, prefix, names, COMMAND_LINE)
        tp, path = _hints(type(obj))[name], _join(prefix, name)
        if i == len(parts) - 1:
            break
        if not dataclasses.is_dataclass(getattr(obj, name)):
            raise ConfigError(
                f"Cannot set '{key}' from {COMMAND_LINE}: '{path}' is {_describe(tp)}, not a section. "
                f"Set it whole instead, e.g. {path}=<value>."
            )
        obj, prefix = getattr(obj, name), path
    value, current = _parse_value(raw, tp, key), getattr(obj, name)
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        _merge(type(cfg), current, value, key, COMMAND_LINE)
    else:
        setattr(obj, name, _coerce(type(cfg), value, tp, key, COMMAND_LINE))


def load(root: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Any:
    """``root()``'s defaults, then the YAML file at `path` (if any), then each `key=value` override in order.

    Checks nothing beyond keys and types; entry points run ``rlvr.config.check_config`` after loading.
    """
    cfg = root()
    if path is not None:
        _merge(root, cfg, _read_yaml(os.fspath(path)), "", os.fspath(path))
    for text in overrides:
        _apply_override(cfg, text)
    return cfg


def parse_cli(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Split argv into (`--config PATH` or None, [key=value overrides])."""
    path, overrides, args = None, [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or arg.startswith("--config="):
            if path is not None:
                raise ConfigError("--config was given twice; pass one recipe and change the rest with key=value.")
            if arg == "--config" and (not args or args[0].startswith("-")):
                raise ConfigError("--config needs a path, e.g. --config recipes/demo.yaml.")
            path = args.pop(0) if arg == "--config" else arg.split("=", 1)[1]
            if not path:
                raise ConfigError("--config needs a path, e.g. --config=recipes/demo.yaml.")
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(
                f"Unrecognised command-line argument {arg!r}. Expected --config PATH and key=value "
                "overrides, e.g. --config recipes/demo.yaml trainer.lr=1e-6 rollout.group_size=8."
            )
    return path, overrides


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
    # multi-line strings (prompt templates) read best as literal blocks
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.SequenceNode:
    # short lists of scalars on one line ([0.9, 0.999]); lists of mappings as blocks
    flat = all(not isinstance(x, (dict, list)) for x in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def save(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config (every key, in definition order) as YAML that ``load`` reads back."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    body = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# Resolved rlvr config; rerun with --config {path}\n{body}")
