"""Reward functions named as TRL names them, called as TRL calls them.

A reward source given as text (PPOConfig ``reward_funcs``, ``gold_scorer``) resolves to a callable here:

- ``http://...`` or ``https://...``: a remote reward server (see ``rlhf_trl.reward.remote``);
- one of TRL's built-in reward functions by name (``think_format_reward``, ``accuracy_reward``, ...). The factories
  (``get_soft_overlong_punishment``, ``get_repetition_penalty_reward``, ``get_cosine_scaled_reward``) take their
  arguments in call form: ``get_soft_overlong_punishment(max_completion_len=64, soft_punish_cache=16)``; a bare
  ``get_soft_overlong_punishment`` gets the values TRL's ``grpo`` script uses (1280, 256);
- ``package.module:function`` or TRL's dotted form ``package.module.function`` (the working directory is searched
  too, as TRL's scripts do); a factory in call form with literal keyword arguments works for these as well.

The result is a ``RewardFunction``: called like TRL calls reward functions, ``f(prompts=..., completions=...,
completion_ids=..., trainer_state=..., log_metric=..., log_extra=..., **dataset_columns)``; ``async def`` functions
run to completion on one background event loop (kept between calls, as TRL keeps one, so clients bound to a loop
keep working); a function whose signature cannot take those arguments fails with one line naming it. ``None`` in
the returned list means "not applicable to this sample", as in TRL.

``TRLRewardKwargs`` makes the per-batch arguments a trainer passes (see its docstring for the wiring).
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import inspect
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Callable

# TRL 1.16's reward functions (trl.rewards): plain functions, and factories that return one.
TRL_REWARD_FUNCTIONS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward")
TRL_REWARD_FACTORIES = ("get_soft_overlong_punishment", "get_repetition_penalty_reward", "get_cosine_scaled_reward")
# A bare factory name gets these arguments: the values TRL's own grpo script registers it with.
TRL_FACTORY_DEFAULTS = {"get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256}}
URL_PREFIXES = ("http://", "https://")
SPEC_FORMS = "'package.module:function', 'package.module.function', an http(s) URL or a TRL reward function name"


class RewardFunctionError(ValueError):
    """A reward source that cannot be resolved or called; the message is one line naming it."""


def callable_name(function: Callable) -> str:
    """Display name of a function, a functools.partial or a callable object (as TRL names them in its metrics)."""
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__name__", type(function).__name__)


def is_async_callable(function: Callable) -> bool:
    """Whether calling ``function`` gives a coroutine: async functions, partials of them, objects with an async
    ``__call__``."""
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)


class _BackgroundLoop:
    """One event loop in a daemon thread for all async reward functions: works from plain code and from inside a
    running loop (a notebook) alike, and keeps loop-bound clients (HTTP sessions) valid between calls."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coroutine):
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="reward-functions", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coroutine, cls._loop).result()


class RewardFunction:
    """A reward function called as TRL calls it; see the module docstring. ``__wrapped__`` is the original."""

    def __init__(self, function: Callable, name: str | None = None):
        self.__wrapped__ = function
        self.__name__ = name or callable_name(function)
        self.is_async = is_async_callable(function)

    def __repr__(self) -> str:
        return f"RewardFunction({self.__name__})"

    def __call__(self, prompts, completions, **kwargs) -> list:
        try:
            result = self.__wrapped__(prompts=prompts, completions=completions, **kwargs)
        except TypeError as error:
            problem = self._signature_problem(prompts, completions, kwargs)
            if problem is None:
                raise  # a TypeError inside the function: its own bug, keep the traceback
            raise RewardFunctionError(f"reward function {self.__name__}: {problem}") from error
        if self.is_async:
            result = _BackgroundLoop.run(result)
        if result is None or isinstance(result, (str, bytes, dict)):
            raise RewardFunctionError(
                f"reward function {self.__name__} returned {type(result).__name__}, not a list of scores"
            )
        return list(result)

    def _signature_problem(self, prompts, completions, kwargs) -> str | None:
        """Why the function cannot take TRL's arguments, or None when it can (the TypeError came from inside)."""
        try:
            signature = inspect.signature(self.__wrapped__)
        except (TypeError, ValueError):  # no signature to read (some builtins)
            return None
        try:
            signature.bind(prompts=prompts, completions=completions, **kwargs)
        except TypeError as error:
            passed = ", ".join(["prompts", "completions", *kwargs])
            if "missing" in str(error):
                return f"{error} (this call passes {passed})"
            return f"cannot be called as TRL calls reward functions ({passed}): {error}; give it a **kwargs parameter"
        return None


def as_reward_function(function: Callable) -> RewardFunction:
    """Wrap a callable once (a RewardFunction is returned as it is)."""
    return function if isinstance(function, RewardFunction) else RewardFunction(function)


def resolve_reward_function(spec: str) -> RewardFunction:
    """The reward function that ``spec`` names (forms in the module docstring); errors are one line naming it."""
    spec = spec.strip()
    if spec.startswith(URL_PREFIXES):
        from rlhf_trl.reward.remote import RemoteReward

        return RewardFunction(RemoteReward(spec))
    target, arguments = _split_call(spec)
    if target in TRL_REWARD_FUNCTIONS + TRL_REWARD_FACTORIES:
        function = getattr(importlib.import_module("trl.rewards"), target)
    elif ":" in target:
        module_name, _, attribute = target.partition(":")
        function = _import_attribute(spec, module_name, attribute)
    elif "." in target:
        module_name, _, attribute = target.rpartition(".")
        function = _import_attribute(spec, module_name, attribute)
    else:
        raise RewardFunctionError(f"reward function {spec!r} must look like {SPEC_FORMS} ({_trl_names()})")
    if arguments is None and target in TRL_REWARD_FACTORIES:
        arguments = dict(TRL_FACTORY_DEFAULTS.get(target, {}))
    if arguments is not None:
        try:
            function = function(**arguments)
        except (TypeError, ValueError) as error:
            raise RewardFunctionError(f"reward function {spec!r}: {error}") from error
        if not callable(function):
            raise RewardFunctionError(f"reward function {spec!r}: the factory returned {type(function).__name__}")
    return RewardFunction(function)


def _trl_names() -> str:
    return "TRL's: " + ", ".join(TRL_REWARD_FUNCTIONS + TRL_REWARD_FACTORIES)


def _split_call(spec: str) -> tuple[str, dict | None]:
    """``name(key=literal, ...)`` -> (name, {key: value}); any other spec -> (spec, None)."""
    if not spec.endswith(")") or "(" not in spec:
        return spec, None
    target, _, rest = spec.partition("(")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if call.args:
            raise ValueError("give the factory's arguments by keyword")
        if any(keyword.arg is None for keyword in call.keywords):
            raise ValueError("**arguments are not accepted")
        arguments = {}
        for keyword in call.keywords:
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                raise ValueError(
                    f"{keyword.arg}= is not a literal (a number, string, list, True/False/None)"
                ) from None
    except (SyntaxError, ValueError) as error:
        raise RewardFunctionError(
            f"reward function {spec!r}: arguments must be keyword=literal pairs, e.g. "
            f"get_soft_overlong_punishment(max_completion_len=64, soft_punish_cache=16) ({error})"
        ) from error
    return target.strip(), arguments


def _import_attribute(spec: str, module_name: str, attribute: str) -> Callable:
    if not module_name or not attribute:
        raise RewardFunctionError(f"reward function {spec!r} must look like {SPEC_FORMS}")
    # Like TRL's scripts, modules in the working directory are found too (the console script's sys.path lacks it).
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises while it loads (SyntaxError, ...)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RewardFunctionError(
            f"reward function {spec!r}: cannot import module {module_name!r} ({type(error).__name__}: {detail})"
        ) from error
    finally:
        if added:
            sys.path.remove(os.getcwd())
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RewardFunctionError(f"reward function {spec!r}: module {module_name!r} has no callable {attribute!r}")
    return function


class TRLRewardKwargs:
    """The keyword arguments TRL's GRPOTrainer/RLOOTrainer pass to reward functions besides prompts, completions and
    dataset columns, for a trainer of this project to pass too; it collects what functions log.

    PPO's CompletionScorer holds one (``reward_kwargs``) and passes ``for_batch(...)`` to every reward call: rollout
    scoring, reference score normalisation and evaluation; what functions log is added to the step's metrics.

    ``log_metric(name, value)`` values are averaged over the calls since the last ``pop_metrics`` (on this process)
    and logged under ``name``, as TRL logs them; ``log_extra(column, values)`` columns are kept for
    ``pop_extra_columns`` (TRL shows them in its completions table).
    """

    def __init__(self):
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._extra: dict[str, list] = defaultdict(list)

    def log_metric(self, name: str, value: float) -> None:
        self._metrics[name].append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self._extra[column].extend(values)

    def for_batch(self, completion_ids, completion_mask, global_step: int, max_steps: int = 0) -> dict:
        """completion_ids, completion_mask: [B, C] tensors (mask 1 up to and including the first EOS). Returns the
        keyword arguments of one reward call: ``completion_ids`` as lists of the real tokens of each answer (EOS
        included, padding not, as TRL gives them), ``trainer_state`` (a transformers TrainerState with
        ``global_step`` and ``max_steps``), ``log_metric`` and ``log_extra``."""
        from transformers import TrainerState

        rows = [ids[mask.bool()].tolist() for ids, mask in zip(completion_ids.cpu(), completion_mask.cpu())]
        return {
            "completion_ids": rows,
            "trainer_state": TrainerState(global_step=global_step, max_steps=max_steps),
            "log_metric": self.log_metric,
            "log_extra": self.log_extra,
        }

    def pop_metrics(self) -> dict[str, float]:
        """Mean of each metric logged since the last call; clears them."""
        means = {name: sum(values) / len(values) for name, values in self._metrics.items() if values}
        self._metrics.clear()
        return means

    def pop_extra_columns(self) -> dict[str, list]:
        columns = dict(self._extra)
        self._extra.clear()
        return columns
