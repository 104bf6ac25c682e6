"""Stopping training that has gone wrong, the same way on every process.

- ``TrainingDivergedError`` (NaN/inf losses or gradients, repeated ratio blow-ups, an exploding loss) and
  ``InvalidRewardError`` (a reward source returned NaN/inf): the step scripts turn them into one line and exit code
  2; checkpoints written before stay as they were.
- ``any_process``: a guard decision (stop, skip) taken on one process is agreed by all of them, so no rank goes on
  to the next collective alone and waits there for ever.
- ``DivergenceCallback``: the SFT and reward trainers (TRL's) stop on a NaN/inf or exploding logged loss without
  saving the diverged weights as a checkpoint or as the final model.
- ``warn_if_rng_state_unusable``: a resumed run whose saved random-number state cannot be restored is told loudly
  that it is no longer reproducible.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class TrainingStoppedError(RuntimeError):
    """A guard stopped training; the step scripts report it as one line with exit code 2."""


class TrainingDivergedError(TrainingStoppedError):
    """NaN/inf in a loss or gradient, or repeated blow-ups: training stops, earlier checkpoints stay intact."""


class InvalidRewardError(TrainingStoppedError):
    """A reward source (reward model, reward or gold function) returned NaN or inf for a sample."""


def agree_any(flags: list[bool], device: torch.device | str | None = None) -> list[bool]:
    """For each flag: whether it is true on any process (one all-reduce for all of them; the flags themselves when
    not distributed). Every process must call this at the same point, as with any collective."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return [bool(flag) for flag in flags]
    if device is None:
        # NCCL reduces only CUDA tensors; gloo (CPU runs) only CPU ones.
        device = f"cuda:{torch.cuda.current_device()}" if distributed.get_backend() == "nccl" else "cpu"
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    distributed.all_reduce(values, op=distributed.ReduceOp.MAX)
    return [bool(value > 0) for value in values.tolist()]


def any_process(flag: bool, device: torch.device | str | None = None) -> bool:
    """Whether ``flag`` is true on any process (see ``agree_any``)."""
    return agree_any([flag], device)[0]


def agree_on_micro_batch(problem: str | None, blown_up: bool, step: int, device=None) -> bool:
    """Decide together whether a PPO micro-batch diverged (``problem`` names a NaN/inf loss: raises
    TrainingDivergedError on every process) or blew up (returns True when it did on any process). A rank stopping or
    skipping alone would leave the others waiting in the next collective (the gradient all-reduce)."""
    diverged, blown_up = agree_any([problem is not None, blown_up], device)
    if diverged:
        problem = problem or "a loss is NaN/inf on another process"
        raise TrainingDivergedError(f"step {step}: {problem}; stopping (last checkpoint kept)")
    return blown_up


def check_gradient_norm(accelerator, model, max_norm: float, step: int) -> None:
    """Clip the gradients of ``model`` to ``max_norm``; a NaN/inf norm on any process stops training. DeepSpeed
    clips and checks overflow inside its own step, so nothing to do under it."""
    if accelerator.state.deepspeed_plugin is not None:
        return
    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    bad = norm is not None and not bool(torch.isfinite(torch.as_tensor(norm)))
    if any_process(bad, accelerator.device):
        raise TrainingDivergedError(f"step {step}: gradient norm is {float(norm)}; stopping (last checkpoint kept)")


def parameters_finite(model) -> bool:
    """Whether every floating-point parameter of ``model`` is finite (this process's shard of it)."""
    return all(torch.isfinite(parameter).all() for parameter in model.parameters() if parameter.is_floating_point())


class DivergenceCallback(TrainerCallback):
    """Stop a Transformers/TRL trainer whose logged training loss is NaN/inf, or above ``factor`` times the loss of
    the first step (an explosion: a loss of 4e8 where it started near 2), or whose gradient norm is NaN/inf (outside
    fp16, where the loss scaler skips such steps by design).

    The loss is also logged at the first step (the reference, measured on the untrained weights) and right before
    every checkpoint, so each checkpoint is written only after a check. On detection the run stops at once, the
    checkpoint due at that step is not written, and ``message`` says what happened; the step script then raises
    ``TrainingDivergedError`` instead of saving the final model.

    factor: None or 0 turns the explosion check off (NaN/inf still stop the run).
    """

    def __init__(self, factor: float | None = 10.0):
        self.factor = factor
        self.first_loss: float | None = None
        self.message: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        if loss is None or self.message is not None:
            return
        problem = None
        if not math.isfinite(loss):
            problem = f"training loss is {loss}"
        elif grad_norm is not None and not math.isfinite(grad_norm) and not getattr(args, "fp16", False):
            problem = f"gradient norm is {grad_norm} (training loss {loss:.4g})"
        elif self.first_loss is None:
            self.first_loss = loss
        elif self.factor and self.first_loss > 0 and loss > self.factor * self.first_loss:
            problem = (
                f"training loss {loss:.4g} is over {self.factor:g} times its first-step value {self.first_loss:.4g}"
            )
        # The logged loss is already averaged over processes; agreeing once more costs one number and guards
        # against any process deciding alone.
        if any_process(problem is not None):
            self._stop(control, state, problem or "another process saw the loss diverge")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1 or control.should_save:
            control.should_log = True  # the reference loss, and a check right before every checkpoint
        if control.should_save and self.message is None and model is not None:
            if any_process(not parameters_finite(model)):
                self._stop(control, state, "the weights hold NaN/inf")

    def _stop(self, control, state, problem: str) -> None:
        self.message = (
            f"step {state.global_step}: {problem}; stopped without saving the diverged model (lower the "
            "learning_rate; checkpoints written before this step are intact)"
        )
        logger.error(self.message)
        control.should_training_stop = True
        control.should_save = False

    def raise_if_diverged(self) -> None:
        if self.message is not None:
            raise TrainingDivergedError(self.message)


RNG_STATE_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def warn_if_rng_state_unusable(accelerator_dir: str | Path, process_index: int) -> bool:
    """Check the random-number state Accelerate saved for this process (``random_states_<rank>.pkl``).

    Accelerate only logs at INFO level when it cannot restore it; the run then continues with a fresh state and is
    no longer reproducible, so we say so as a warning. Returns True when the state is usable."""
    path = Path(accelerator_dir) / f"random_states_{process_index}.pkl"
    try:
        states = torch.load(path, weights_only=False)
        usable = isinstance(states, dict) and all(key in states for key in RNG_STATE_KEYS)
        reason = "it lacks the python/numpy/torch states" if not usable else ""
    except Exception as error:  # missing, truncated or from an incompatible version: all mean the same here
        usable, reason = False, f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    if not usable:
        logger.warning(
            "cannot restore the random-number state from %s (%s): the resumed run continues from fresh random "
            "states, so it is NOT reproducible (sampling and shuffling differ from an uninterrupted run)",
            path,
            reason,
        )
    return usable
