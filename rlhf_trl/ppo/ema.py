"""Exponential moving average of the actor's weights (DS-Chat's --enable_ema), updated after each optimizer step."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def ema_update(ema_parameters: Iterable[torch.Tensor], parameters: Iterable[torch.Tensor], beta: float) -> None:
    """In place, for each pair: ema = beta * ema + (1 - beta) * parameter (DS-Chat uses beta = 0.992).

    Both iterables must yield the same number of tensors, in matching order and shapes. The EMA copy may live on
    another device or in another dtype (e.g. float32 on the CPU).
    """
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}.")
    for ema_parameter, parameter in zip(ema_parameters, parameters, strict=True):
        if ema_parameter.shape != parameter.shape:
            raise ValueError(f"EMA parameter shape {tuple(ema_parameter.shape)} != {tuple(parameter.shape)}.")
        parameter = parameter.to(device=ema_parameter.device, dtype=ema_parameter.dtype)
        ema_parameter.mul_(beta).add_(parameter, alpha=1 - beta)
