"""Loading custom reward functions by name and combining several into one reward.

Every reward function shares one signature::

    fn(completions: list[str], answers: list[str], **columns) -> list[float]

where ``columns`` are the other dataset columns of the batch (ignore what you don't use).
"""

from __future__ import annotations

import difflib
import importlib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlvr.rewards.numeric import numeric_reward, outcome_metrics
from rlvr.rewards.verifier import OUTCOMES, Verifier

RewardFn = Callable[..., list]
_RESERVED_NAMES = set(OUTCOMES) | {"has_boxed", "fast_path"}


class RewardFunctionError(ValueError):
    """A reward function cannot be loaded, or returned something that is not a reward list."""


def load_reward_function(path: str) -> RewardFn:
    """Import ``"package.module:function"`` (``function`` may be dotted: ``Class.method``).

    Raises RewardFunctionError naming ``path`` when the module is not found, fails to
    import, lacks the attribute (with close matches), or the attribute is not callable.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise RewardFunctionError(
            f"reward function {path!r}: expected 'module:function', e.g. 'rlvr.rewards:numeric_reward'"
        )
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise RewardFunctionError(
                f"reward function {path!r}: module {module_name!r} not found; check the spelling, "
                "and that it is importable from the working directory (or installed)"
            ) from None
        raise RewardFunctionError(f"reward function {path!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:
        raise RewardFunctionError(
            f"reward function {path!r}: importing {module_name!r} raised {type(e).__name__}: {e}"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            options = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, options, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RewardFunctionError(f"reward function {path!r}: {module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardFunctionError(f"reward function {path!r}: {attr!r} is not callable (it is {type(obj).__name__} {obj!r:.40})")
    return obj


@dataclass(frozen=True)
class _Term:
    name: str
    path: str
    weight: float
    fn: RewardFn


def _check_rewards(term: _Term, values: Any, n: int) -> list[float]:
    where = f"reward function {term.path!r}"
    if not isinstance(values, (list, tuple)):
        hint = " (convert with .tolist())" if hasattr(values, "tolist") else ""
        raise RewardFunctionError(f"{where} returned {type(values).__name__}; expected a list of {n} floats{hint}")
    if len(values) != n:
        raise RewardFunctionError(f"{where} returned {len(values)} rewards for {n} completions")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise RewardFunctionError(f"{where} returned {v!r} at index {i}; rewards must be finite floats")
        out.append(float(v))
    return out


class RewardComposer:
    """A weighted sum of reward functions.

    ``specs`` are ("module:function", weight) pairs. Calling the composer returns the
    per-completion total and step metrics: ``reward/<function name>`` is the mean
    (unweighted) reward of each function. ``rlvr.rewards:numeric_reward`` among them is
    computed by the composer's own ``verifier`` (the run's settings), and its
    ``outcome_metrics`` of that batch are included too (``reward/correct``,
    ``reward/no_answer``, ``reward/timeout``, ... ``reward/fast_path``).
    """

    def __init__(self, specs: Sequence[tuple[str, float]], verifier: Verifier | None = None):
        self.verifier = verifier if verifier is not None else Verifier()
        if not specs:
            raise RewardFunctionError("no reward functions given; e.g. [('rlvr.rewards:numeric_reward', 1.0)]")
        terms: list[_Term] = []
        for spec in specs:
            if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
                raise RewardFunctionError(f"reward spec {spec!r}: expected ('module:function', weight)")
            path, weight = spec
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise RewardFunctionError(f"reward function {path!r}: weight must be a finite number, got {weight!r}")
            fn = load_reward_function(path)
            terms.append(_Term(getattr(fn, "__name__", path.split(":")[1]), path, float(weight), fn))
        names = [t.name for t in terms]
        for i, t in enumerate(terms):
            if names.count(t.name) > 1:  # two functions with the same name: use the full path
                terms[i] = _Term(t.path.replace(":", "."), t.path, t.weight, t.fn)
            if terms[i].name in _RESERVED_NAMES:
                raise RewardFunctionError(
                    f"reward function {t.path!r}: its metric reward/{t.name} would collide with the "
                    "verifier's outcome metrics; rename the function"
                )
        if len({t.name for t in terms}) != len(terms):
            raise RewardFunctionError(f"reward function listed twice: {[t.path for t in terms]}")
        self.terms = terms

    def __call__(self, completions: list[str], answers: list[str], **columns: Any) -> tuple[list[float], dict[str, float]]:
        n = len(completions)
        if len(answers) != n:
            raise RewardFunctionError(f"{n} completions but {len(answers)} answers")
        total = [0.0] * n
        metrics: dict[str, float] = {}
        for term in self.terms:
            if term.fn is numeric_reward:  # the verifier this composer owns, with its outcomes
                results = self.verifier.verify_batch(completions, answers)
                values = [r.reward for r in results]
                metrics.update(outcome_metrics(results))
            else:
                values = term.fn(completions, answers, **columns)
            rewards = _check_rewards(term, values, n)
            metrics[f"reward/{term.name}"] = sum(rewards) / n if n else 0.0
            total = [t + term.weight * r for t, r in zip(total, rewards)]
        return total, metrics
