"""KL coefficient controllers: the fixed one never moves, the adaptive one steers the KL towards its target."""

from __future__ import annotations

import pytest
import torch

from rlhf_trl.ppo.kl_control import AdaptiveKLController, FixedKLController, build_kl_controller


def reference_adaptive_value(value: float, current_kl: float, target: float, n_steps: int, horizon: int) -> float:
    """Ziegler et al. 2019, written out: e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n / horizon)."""
    error = current_kl / target - 1
    if error > 0.2:
        error = 0.2
    if error < -0.2:
        error = -0.2
    return value * (1 + error * n_steps / horizon)


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.1)
    for current_kl in (0.0, 0.05, 1.0, 100.0, -3.0):
        controller.update(current_kl, n_steps=512)
        assert controller.value == 0.1
    assert isinstance(controller.value, float)


def test_fixed_controller_state_dict_round_trip():
    controller = FixedKLController(0.1)
    state = controller.state_dict()
    assert state == {"value": 0.1}
    restored = FixedKLController(0.5)
    restored.load_state_dict(state)
    assert restored.value == 0.1


def test_adaptive_controller_direction():
    target, horizon, n_steps = 6.0, 10000, 64
    above = AdaptiveKLController(0.1, target, horizon)
    above.update(7.0, n_steps)  # KL above target: penalise more
    assert above.value > 0.1
    below = AdaptiveKLController(0.1, target, horizon)
    below.update(5.0, n_steps)  # KL below target: penalise less
    assert below.value < 0.1
    on_target = AdaptiveKLController(0.1, target, horizon)
    on_target.update(target, n_steps)
    assert on_target.value == pytest.approx(0.1, rel=1e-15)


@pytest.mark.parametrize("current_kl", [0.0, 1.0, 5.5, 6.0, 6.6, 7.2, 7.3, 50.0])
@pytest.mark.parametrize("n_steps", [1, 64, 2048])
def test_adaptive_controller_matches_formula(current_kl, n_steps):
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(current_kl, n_steps)
    expected = reference_adaptive_value(0.2, current_kl, 6.0, n_steps, 10000)
    assert controller.value == pytest.approx(expected, rel=1e-14)


def test_adaptive_controller_error_is_clipped():
    horizon, n_steps = 1000, 100
    far_above = AdaptiveKLController(1.0, target=1.0, horizon=horizon)
    far_above.update(1000.0, n_steps)
    assert far_above.value == pytest.approx(1 + 0.2 * n_steps / horizon)
    zero_kl = AdaptiveKLController(1.0, target=1.0, horizon=horizon)
    zero_kl.update(0.0, n_steps)
    assert zero_kl.value == pytest.approx(1 - 0.2 * n_steps / horizon)
    # any KL beyond +-20 % of the target gives the same step
    just_outside = AdaptiveKLController(1.0, target=1.0, horizon=horizon)
    just_outside.update(1.25, n_steps)
    assert just_outside.value == pytest.approx(far_above.value)


def test_adaptive_controller_closed_loop_reaches_target():
    """A toy policy whose KL falls as the penalty grows (KL = 0.6 / coefficient): the controller settles where the
    KL equals the target, from either side."""
    target = 3.0
    for initial_coefficient in (0.05, 1.0):
        controller = AdaptiveKLController(initial_coefficient, target=target, horizon=1000)
        for _ in range(400):
            controller.update(0.6 / controller.value, n_steps=64)
        assert 0.6 / controller.value == pytest.approx(target, rel=1e-3)
        assert controller.value == pytest.approx(0.2, rel=1e-3)


def test_adaptive_controller_accepts_tensor_kl():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(torch.tensor(7.0), n_steps=64)
    assert isinstance(controller.value, float)
    assert controller.value == pytest.approx(reference_adaptive_value(0.1, 7.0, 6.0, 64, 10000))


def test_adaptive_controller_state_dict_round_trip(tmp_path):
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    for current_kl in (9.0, 7.0, 2.0):
        controller.update(current_kl, n_steps=256)
    path = tmp_path / "kl_controller.pt"
    torch.save(controller.state_dict(), path)
    restored = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    restored.load_state_dict(torch.load(path))
    assert restored.value == controller.value
    # the restored controller continues exactly like the original
    controller.update(8.0, n_steps=256)
    restored.update(8.0, n_steps=256)
    assert restored.value == controller.value


def test_adaptive_controller_bad_arguments():
    with pytest.raises(ValueError, match="init_kl_coef"):
        AdaptiveKLController(0.0, target=6.0, horizon=10000)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=None, horizon=10000)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, target=6.0, horizon=0)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-0.1)


def test_build_kl_controller():
    fixed = build_kl_controller(0.1, adaptive=False, target=None, horizon=10000)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.1
    fixed_with_unused_target = build_kl_controller(0.1, adaptive=False, target=6.0, horizon=10000)
    assert isinstance(fixed_with_unused_target, FixedKLController)
    adaptive = build_kl_controller(0.2, adaptive=True, target=6.0, horizon=5000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.2, 6.0, 5000)
    with pytest.raises(ValueError, match="needs a target"):
        build_kl_controller(0.1, adaptive=True, target=None, horizon=10000)
