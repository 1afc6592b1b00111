"""Proxy datasets: a trial trains on a deterministic share of its dataset (``hpod.trial.subset``).

Standard library only, and no torch import: a torch ``Dataset`` is recognised only when torch is
already imported (by the trial, which made the dataset), and then wrapped in torch's own
``Subset``. hpopt's ``createHpoDataset`` does the same job with its ``subset_ratio`` and a floor of
500 samples (docs/time-budget.md).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, overload

# hpopt's smallest subset (min_subset_size): a proxy under it says little about the full data.
FLOOR = 500
# The trial's config key (hpod.core.spec.SUBSET_KEY): searched, fixed, or set by the time budget.
KEY = "subset_ratio"

T = TypeVar("T")


class Subset(Sequence[T]):
    """A read-only view of some items of a sequence, by index, in the sequence's order."""

    def __init__(self, data: Sequence[T], indices: Sequence[int]) -> None:
        self.data = data
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> Subset[T]: ...
    def __getitem__(self, i: int | slice) -> T | Subset[T]:
        if isinstance(i, slice):
            return Subset(self.data, self.indices[i])
        return self.data[self.indices[i]]

    def __iter__(self) -> Iterator[T]:
        return (self.data[j] for j in self.indices)

    def __repr__(self) -> str:
        return f"Subset({len(self.indices)} of {len(self.data)})"


def _config_ratio() -> float | None:
    raw = os.environ.get("HPOD_CONFIG")
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    value = parsed.get(KEY) if isinstance(parsed, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"the trial's {KEY} must be a number in (0, 1], got {value!r}")
    return float(value)


def indices(n: int, ratio: float, *, floor: int = FLOOR, seed: int = 0) -> list[int]:
    """The indices of the subset of ``n`` items: ``ceil(n * ratio)`` of them, never fewer than
    ``floor`` (nor more than ``n``), drawn with ``seed`` and kept in order. The same arguments
    give the same indices, in any process."""
    if not 0 < ratio <= 1 or math.isnan(ratio):
        raise ValueError(f"subset ratio must be in (0, 1], got {ratio!r}")
    if floor < 0:
        raise ValueError(f"floor must be 0 or more, got {floor!r}")
    k = min(n, max(math.ceil(n * ratio - 1e-9), floor))
    if k >= n:
        return list(range(n))
    import random  # only when a subset is really taken: the trial module imports in milliseconds

    return sorted(random.Random(seed).sample(range(n), k))


def subset(dataset: Any, ratio: float | None = None, *, floor: int = FLOOR, seed: int = 0) -> Any:
    """A deterministic share of ``dataset`` for this trial (hpopt's ``createHpoDataset``).

    ``ratio``: the share to keep, in (0, 1]; None takes the trial's config key ``subset_ratio``
    (which a spec searches, fixes, or the time budget sets), and without one the whole dataset.
    Never fewer than ``floor`` samples (hpopt's 500), nor more than the dataset has. The same
    ``seed`` gives the same samples in every trial, so trials compare on the same data.

    What comes back: the dataset itself when nothing is cut; for a torch ``Dataset`` (torch
    already imported), a ``torch.utils.data.Subset``; for a list or tuple, one of the same type;
    for an array or tensor (anything with ``shape`` that takes a list of indices), the array of
    those rows; for any other sequence, a :class:`Subset` view.
    """
    if ratio is None:
        ratio = _config_ratio()
        if ratio is None:
            return dataset
    n = len(dataset)
    keep = indices(n, float(ratio), floor=floor, seed=seed)
    if len(keep) >= n:
        return dataset
    data_mod = sys.modules.get("torch.utils.data")
    if data_mod is not None and isinstance(dataset, data_mod.Dataset):
        return data_mod.Subset(dataset, keep)
    if isinstance(dataset, list):
        return [dataset[i] for i in keep]
    if isinstance(dataset, tuple):
        return tuple(dataset[i] for i in keep)
    if hasattr(dataset, "shape"):
        return dataset[keep]
    return Subset(dataset, keep)
