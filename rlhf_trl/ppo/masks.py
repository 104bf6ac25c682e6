"""Masks over right-padded completions and the statistics taken under them, as pure functions on tensors.

Shapes: B = batch, T = completion length. ``mask`` is [B, T] (float, bool or long) with 1 on real completion tokens
(up to and including the first EOS) and 0 on padding. Results (and gradients) do not depend on the values at padded
positions, even inf or NaN there: padded entries are selected away with ``torch.where`` (``fill_padding``), never
multiplied by 0.
"""

from __future__ import annotations

import torch


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the tensors if they do not all have the same shape."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"Shape mismatch: {described}; these tensors must have the same shape.")


def fill_padding(values: torch.Tensor, mask: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """``values`` with every padded entry (mask 0) replaced by ``value``.

    Masking by multiplication is not enough: an inf or NaN at a padded position gives inf * 0 = NaN, in the forward
    pass and in the gradient. ``torch.where`` selects instead of multiplying, and filling before any exp or square
    keeps padded entries harmless in the backward pass too.
    """
    return torch.where(mask.bool(), values, torch.as_tensor(value, dtype=values.dtype, device=values.device))


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is 1 (mask entries are 0 or 1, same shape as values).

    dim=None: a scalar over all real entries; otherwise the mean along ``dim``. A slice with no real entry gives 0
    rather than NaN.
    """
    check_same_shape(values=values, mask=mask)
    kept = fill_padding(values, mask)
    mask = mask.to(values.dtype)
    masked_sum = kept.sum() if dim is None else kept.sum(dim=dim)
    real_count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum / real_count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Scalar variance of ``values`` over entries where ``mask`` is 1.

    unbiased=True divides by (n - 1) and needs at least two real entries; unbiased=False divides by n.
    """
    values = fill_padding(values, mask)
    mean = masked_mean(values, mask)  # scalar
    centered_squares = (values - mean) ** 2
    variance = masked_mean(centered_squares, mask)  # scalar, divided by n
    if unbiased:
        real_count = mask.to(values.dtype).sum()
        if real_count.item() < 2:
            raise ValueError(f"The unbiased variance needs at least 2 real entries, got {real_count.item():g}.")
        variance = variance * real_count / (real_count - 1)  # Bessel's correction
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``values`` to unit variance over the real entries: (x - mean) / sqrt(var + 1e-8).

    The variance is the population one (divided by n), so the real entries of the output have variance 1 (up to the
    1e-8) and a single real entry whitens to 0 instead of failing. shift_mean=False keeps the original mean (only the
    spread is normalised). Padded entries of the output are 0.
    """
    values = fill_padding(values, mask)
    mean = masked_mean(values, mask)  # scalar
    variance = masked_var(values, mask, unbiased=False)  # scalar
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return fill_padding(whitened, mask)
