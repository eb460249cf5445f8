"""GRPO reward functions, picked by name from one table (stage YAML: ``rewards: [format, accuracy]``).

Every reward has trl 1.16's signature ``f(prompts, completions, completion_ids, **kwargs) -> list[float]``;
extra dataset columns arrive as keyword lists, so the accuracy reward reads the ground truth from the
``label`` column. Completions are conversational (a list with one assistant message) or plain strings;
both are accepted. Judging is delegated to the task's parser (``Task.parse``, the runtime's rule), the same
the evaluation uses, so what is rewarded is exactly what is scored. ``get_rewards(names, task)`` binds the
built-in rewards to a run's task; called without one they judge EmoSet's answers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from factory.errors import ConfigError
from factory.tasks import Task, load_task


def completion_text(completion) -> str:
    """The text of one completion: a string, or the content of a conversational assistant turn.

    >>> completion_text([{"role": "assistant", "content": "<answer>awe</answer>"}])
    '<answer>awe</answer>'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


def format_reward(completions, task: Task | None = None, **kwargs) -> list[float]:
    """1.0 for the strict ``<think>…</think><answer>LABEL</answer>`` shape with nothing after it, else 0.0.

    >>> format_reward(["<think>dark sky</think><answer>fear</answer>",
    ...                "<think>dark sky</think><answer>fear</answer> and more",
    ...                "<answer>fear</answer>"])
    [1.0, 0.0, 0.0]
    """
    task = load_task(task)
    return [float(task.parse(completion_text(c)).well_formed) for c in completions]


#: The prefix of the per-class accuracy reward metrics (``factory.train.plots`` draws them).
ACCURACY_BY_CLASS = "rewards/accuracy_by_class"


def accuracy_reward(completions, label, log_metric=None, task: Task | None = None, **kwargs) -> list[float]:
    """1.0 when the parsed answer equals the ground-truth ``label``, else 0.0 (format not required).

    With trl's ``log_metric`` callback, each completion's reward is also logged under
    ``rewards/accuracy_by_class/<label>``; trl averages a metric over its logged values, so the curve is
    the class's mean reward (one class collapsing is invisible in the overall mean).

    >>> accuracy_reward(["<think>x</think><answer>Awe</answer>", "<answer>awe</answer>", "awe"],
    ...                 label=["awe", "awe", "awe"])
    [1.0, 1.0, 0.0]
    """
    task = load_task(task)
    rewards = [float(task.parse(completion_text(c)).label == truth) for c, truth in zip(completions, label,
                                                                                         strict=True)]
    if log_metric is not None:
        for truth, reward in zip(label, rewards, strict=True):
            log_metric(f"{ACCURACY_BY_CLASS}/{truth}", reward)
    return rewards


#: Every reward a stage can name.
REWARDS: dict[str, Callable[..., list[float]]] = {"format": format_reward, "accuracy": accuracy_reward}


def get_rewards(names: list[str] | tuple[str, ...], task: Task | None = None) -> list[Callable[..., list[float]]]:
    """Resolve rewards: a built-in name (bound to ``task``: its labels and answer rule), or ``module:function``
    (a function with trl's reward signature, imported from the installed packages or the working directory;
    it gets the dataset's ``label`` column like any other, and the run's ``Task`` when it has a ``task``
    parameter). Anything else is a one-line config error.

    >>> [f.__name__ for f in get_rewards(["format", "accuracy"])]
    ['format_reward', 'accuracy_reward']
    >>> get_rewards(["factory.rewards:format_reward"])[0].__wrapped__ is format_reward  # bound: it takes task
    True
    """
    return [_bind(REWARDS[n], task) if n in REWARDS else _import_reward(n, task) for n in names]


def _bind(reward: Callable[..., list[float]], task: Task | None) -> Callable[..., list[float]]:
    """``reward`` judging ``task``'s answers, under its own name (trl logs a reward by ``__name__``)."""
    task = load_task(task)

    @functools.wraps(reward)
    def bound(*args, **kwargs):
        return reward(*args, **kwargs, task=task)

    return bound


def _import_reward(path: str, task: Task | None = None) -> Callable[..., list[float]]:
    """``module:function`` imported and checked; one that takes a ``task`` parameter judges the run's task
    (as the built-in ones do)."""
    import importlib
    import inspect
    import os
    import sys

    module_name, sep, function = path.partition(":")
    if not sep or not module_name or not function:
        raise ConfigError(f"unknown reward {path!r}; give a built-in one ({', '.join(sorted(REWARDS))}) or "
                          "module:function")
    if os.getcwd() not in sys.path:  # the `svlm` script's sys.path starts at its bin folder, not here
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward {path!r}: cannot import {module_name} ({e})") from None
    except Exception as e:  # noqa: BLE001 (the user's module failed while importing)
        raise ConfigError(f"reward {path!r}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    func = getattr(module, function, None)
    if not callable(func):
        raise ConfigError(f"reward {path!r}: {module_name} has no function {function!r}")
    params = inspect.signature(func).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ConfigError(f"reward {path!r} must take **kwargs: trl calls f(prompts=, completions=, "
                          "completion_ids=, **dataset_columns) -> list[float]")
    return _bind(func, task) if "task" in params else func
