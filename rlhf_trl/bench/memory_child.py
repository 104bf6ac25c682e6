"""The measuring side of ``python -m rlhf_trl.bench.memory``: a step script run inside this process, which reads its
own peak resident set (``VmHWM``) over the whole run and over training alone, and CUDA's allocation peaks."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from rlhf_trl.steps import BY_NAME


def status_kib(field: str) -> int | None:
    """A ``VmXXX`` line of /proc/self/status in KiB, or None where there is no /proc (not Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class TrainingPeakTracker:
    """Global optimizer-step hooks of torch: they see every optimizer the step script creates, whichever trainer.

    At the first step the peak marks (RSS, and CUDA's when in use) are reset, so the training peak leaves model
    loading out; after each step the marks are read. Trainable parameters are those the optimizers hold, counted
    once each (Accelerate's optimizer wrapper shares its parameters with the optimizer inside).
    """

    def __init__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self.parameter_sizes: dict[int, int] = {}
        self.load_peak_kib: int | None = None
        self.train_peak_kib: int | None = None
        self.file_rss_kib: int | None = None
        self.cuda_load_peak: int | None = None
        self.cuda_train_peak: int | None = None
        self.reset_worked = False
        self.handles = [
            register_optimizer_step_pre_hook(self.before_step),
            register_optimizer_step_post_hook(self.after_step),
        ]

    def before_step(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                self.parameter_sizes[id(parameter)] = parameter.numel()
        if self.load_peak_kib is None:
            self.load_peak_kib = status_kib("VmHWM")
            self.reset_worked = reset_peak_rss()
            if cuda_in_use():
                import torch

                self.cuda_load_peak = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()

    def after_step(self, optimizer, args, kwargs) -> None:
        if self.reset_worked:
            self.train_peak_kib = status_kib("VmHWM")
        # Resident pages of mapped files (libraries, and a checkpoint that loading keeps mapped): clean and
        # reclaimable, yet counted in RSS, so they are shown beside it.
        self.file_rss_kib = status_kib("RssFile")
        if cuda_in_use():
            import torch

            self.cuda_train_peak = torch.cuda.max_memory_allocated()

    def trainable_parameters(self) -> int | None:
        return sum(self.parameter_sizes.values()) or None


def cuda_in_use() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


def mib(kib_or_bytes: int | None, unit: int) -> float | None:
    return None if kib_or_bytes is None else round(kib_or_bytes * unit / 2**20, 1)


def run_child(argv: list[str]) -> int:
    """``STEP RESULT_JSON SCRIPT_ARGS...``: run ``rlhf_trl.scripts.STEP`` in this process and write its peaks.

    Why not measure from the parent: ``ru_maxrss`` of a child counts the memory of the process it was forked from
    (the pre-exec copy is charged to it), and polling ``/proc/<pid>/status`` from outside can miss the last rise.
    A process reading its own ``VmHWM`` at exit has neither problem; child processes of the step (none in these
    settings) would not be counted.
    """
    step, result_path, *script_args = argv
    module = importlib.import_module(BY_NAME[step].module)
    tracker = TrainingPeakTracker()
    sys.argv = [module.__file__, *script_args]  # what the script records as its command in run_info.json
    exit_code, error = 1, None
    try:
        exit_code = int(module.cli(script_args) or 0)
    except Exception as exception:  # the parent reports the failed run and goes on with the others
        error = f"{type(exception).__name__}: {exception}"
        raise
    finally:
        end_peak_kib = status_kib("VmHWM")
        peaks = [kib for kib in (tracker.load_peak_kib, end_peak_kib) if kib is not None]
        result = {
            "exit_code": exit_code,
            "error": error,
            "peak_rss_mib": mib(max(peaks), 1024) if peaks else None,
            "train_peak_rss_mib": mib(tracker.train_peak_kib, 1024),
            "file_rss_mib": mib(tracker.file_rss_kib, 1024),
            "trainable_parameters": tracker.trainable_parameters(),
            "cuda_peak_allocated_mib": None,
            "cuda_train_peak_allocated_mib": None,
        }
        if cuda_in_use():
            import torch

            # The marks were reset at the first optimizer step: the whole run's peak is the larger of both phases.
            phases = [peak for peak in (tracker.cuda_load_peak, torch.cuda.max_memory_allocated()) if peak is not None]
            result["cuda_peak_allocated_mib"] = mib(max(phases), 1)
            result["cuda_train_peak_allocated_mib"] = mib(tracker.cuda_train_peak, 1)
        Path(result_path).write_text(json.dumps(result))
    return exit_code
