"""Seeded, disjoint cuts of a dataset: the per-step shares of ``data_split``, the automatic eval split, and
weighted mixing of several sources. All functions are pure: same inputs and seed, same result."""

from __future__ import annotations

import hashlib
import random


def derived_seed(seed: int, *labels: object) -> int:
    """A seed for one purpose (e.g. one source's step shares), stable across runs and Python versions."""
    text = "\x1f".join([str(seed), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def step_share_indices(count: int, shares: tuple[float, float, float], seed: int) -> list[list[int]]:
    """Split ``range(count)`` into three disjoint index lists with sizes proportional to ``shares``.

    The indices are shuffled once with ``seed`` and cut at the rounded cumulative shares, so every index lands in
    exactly one step and each list is in ascending order (records keep their source order within a step).
    """
    order = list(range(count))
    random.Random(seed).shuffle(order)
    cuts, cumulative = [0], 0.0
    for share in shares:
        cumulative += share
        cuts.append(round(cumulative * count))
    cuts[-1] = count
    return [sorted(order[cuts[step] : cuts[step + 1]]) for step in range(len(shares))]


def eval_holdout(count: int, ratio: float, seed: int) -> set[int]:
    """Positions held out for evaluation: ``round(count * ratio)``, at least one when ratio > 0 and count >= 2,
    and never all of them."""
    if ratio <= 0 or count < 2:
        return set()
    size = min(count - 1, max(1, round(count * ratio)))
    return set(random.Random(seed).sample(range(count), size))


def apply_weight(records: list, weight: float, seed: int) -> list:
    """Records repeated ``int(weight)`` times plus a seeded sample of the fractional part.

    Weight 1 returns the records unchanged; 0.5 half of them; 2.5 two copies and half of a third.
    """
    whole, fraction = int(weight), weight - int(weight)
    result = list(records) * whole
    extra = round(fraction * len(records))
    if extra:
        positions = sorted(random.Random(seed).sample(range(len(records)), extra))
        result.extend(records[position] for position in positions)
    return result


def shuffled(records: list, seed: int) -> list:
    result = list(records)
    random.Random(seed).shuffle(result)
    return result
