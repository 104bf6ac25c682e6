"""Controllers for the coefficient of the KL penalty in the reward.

DeepSpeed-Chat uses a fixed coefficient (0.1). The adaptive controller is the proportional one of Ziegler et al.
2019 ("Fine-Tuning Language Models from Human Preferences"): it steers the measured KL towards a target.
"""

from __future__ import annotations


class FixedKLController:
    """A constant KL coefficient; ``update`` does nothing."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Kept for the shared interface: a fixed coefficient ignores the measured KL."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.value = float(state_dict["value"])


class AdaptiveKLController:
    """Proportional controller of the KL coefficient (Ziegler et al. 2019, section 2.2).

    After each rollout batch: error = clip(current_kl / target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon.
    A KL above the target raises the coefficient (stronger penalty), below lowers it. Clipping the error bounds the
    change per sample, so one odd batch cannot swing the coefficient.

    init_kl_coef: starting coefficient (> 0: the update is multiplicative, 0 would stay 0). target: the KL aimed at
    (> 0), in the units the trainer measures (e.g. summed over the answer's tokens, averaged over the batch).
    horizon: number of samples over which an error is corrected by about a factor e (Ziegler et al. use 10000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef must be > 0 for the adaptive controller, got {init_kl_coef}.")
        if target is None or target <= 0:
            raise ValueError(f"target must be a KL value > 0 for the adaptive controller, got {target}.")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """current_kl: the KL measured on the last rollout batch. n_steps: samples in that batch (Ziegler et al.
        count samples, so the adaptation speed does not depend on the batch size)."""
        proportional_error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        """Only the coefficient is state; target and horizon come from the configuration."""
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.value = float(state_dict["value"])


def build_kl_controller(
    kl_coef: float, adaptive: bool, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """The adaptive controller starting at ``kl_coef`` if ``adaptive`` (then ``target`` is required), else a fixed
    coefficient (``target`` and ``horizon`` are then unused)."""
    if adaptive:
        if target is None:
            raise ValueError("The adaptive KL controller needs a target KL; set target or use a fixed coefficient.")
        return AdaptiveKLController(kl_coef, target, horizon)
    return FixedKLController(kl_coef)
