"""Two-objective benchmarks for the simulator: learning curves with a known Pareto front.

Each is a :class:`hpod.benchmarks.Benchmark` (``step(config, resource, seed) -> (metrics,
seconds)``) with two metrics, both minimized, a reference point for the hypervolume, the true
objectives of a configuration (noise-free, at ``max_resource``) and the hypervolume of the true
front (so a study's hypervolume can be read as a gap to the best there is).

- ``zdt1-curves``: ZDT1 (Zitzler, Deb and Thiele 2000) on four parameters, ``f1 = x0`` and
  ``f2 = g (1 - sqrt(f1 / g))`` with ``g = 1 + 2 mean(x1, x2, x3)``, plus a fidelity term on each
  that vanishes at ``max_resource``: ``f1`` is shifted by ``0.3 (1 - r)**2`` (``r = resource /
  max_resource``), the same for all, and ``f2`` by ``0.6 (1 - r) exp(-resource / tau)`` with
  ``tau = 1 + 10 (1 - x1)**2``: the configurations near the front (small ``x1``) learn slowly, so
  low rungs rank them worse than they end (crossing curves, like ``curves-crossing``). The true
  front is ZDT1's, ``f2 = 1 - sqrt(f1)`` for ``f1`` in [0, 1]; reference (1.1, 3.1) (``f2 <= g <=
  3``), where its hypervolume is ``2.1 + 2/3 + 0.31``.
- ``curves-crossing-cost``: ``curves-crossing`` with a fourth parameter, the width ``w``: the error
  is the crossing curve's loss plus ``0.3 (1 - w)**2`` (a narrow model ends worse) and the cost is
  its size, ``w``, the same at every level (an epoch of a wide model also takes longer: ``(1 +
  z)(0.5 + w)`` seconds). The front is ``error = e0 + 0.3 (1 - w)**2`` against ``size = w``, with
  ``e0`` the best error of ``curves-crossing``; reference (1.0, 1.1): hypervolume ``1.1 (1 - e0) -
  0.1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpod.benchmarks import MAX_RESOURCE, StepFn, _cost, _crossing_loss
from hpod.core.pareto import hypervolume_2d


@dataclass(frozen=True)
class MultiBenchmark:
    """A benchmark whose trials report several metrics (kept apart from
    :class:`hpod.benchmarks.Benchmark`, whose file is part of the key of the quality benchmark's
    cached Syne Tune runs)."""

    name: str
    step: StepFn
    space: Mapping[str, Any]  # a [space] table, as in a spec
    metrics: tuple[tuple[str, str], ...]  # (name, mode), in the spec's order
    true_values: Callable[[Mapping[str, Any]], tuple[float, ...]]
    reference: tuple[float, ...]  # for the hypervolume, in the metrics' own (minimized) terms
    front_hypervolume: float  # of the true front, against ``reference``
    max_resource: int = MAX_RESOURCE

    def __call__(
        self, config: Mapping[str, Any], resource: float, seed: int
    ) -> tuple[dict[str, float], float]:
        return self.step(config, resource, seed)

    def spec_mapping(self, scheduler: Mapping[str, Any], *, seed: int = 0) -> dict[str, Any]:
        """A study spec (as parsed TOML) with both objectives and the given [scheduler] table."""
        metrics = [{"name": n, "mode": m} for n, m in self.metrics]
        return {
            "name": self.name,
            "command": ["true"],
            "objective": {"resource": "epoch", "metrics": metrics},
            "space": dict(self.space),
            "scheduler": {"max_resource": self.max_resource, **scheduler},
            "searcher": {"type": "random", "seed": seed},
        }


@dataclass(frozen=True)
class Hypervolume:
    """How a study with several objectives is measured: each metric's name and mode, in order,
    and the reference point, in "smaller is better" terms (a ``max`` metric's value negated);
    with ``true_values`` (a configuration's noise-free objectives at ``max_resource``, in the
    metrics' own terms) the true hypervolume of the measured front's configurations as well."""

    metrics: tuple[tuple[str, str], ...]
    reference: tuple[float, ...]
    true_values: Callable[[Mapping[str, Any]], tuple[float, ...]] | None = None

    @classmethod
    def of(cls, bench: MultiBenchmark) -> Hypervolume:
        return cls(bench.metrics, bench.reference, bench.true_values)

    def minimized(self, values: Sequence[float]) -> tuple[float, ...]:
        return tuple(
            -float(v) if mode.startswith("max") else float(v)
            for v, (_, mode) in zip(values, self.metrics, strict=True)
        )

    def point(self, report: Mapping[str, Any]) -> tuple[float, ...]:
        """A report's metrics, minimized; a missing or non-numeric one counts as NaN (worst)."""
        out = []
        for name, _ in self.metrics:
            v = report.get(name)
            out.append(float(v) if isinstance(v, int | float) else math.nan)
        return self.minimized(out)


class Front:
    """The non-dominated measured points so far, each with its configuration."""

    def __init__(self, hv: Hypervolume) -> None:
        self.hv = hv
        self.points: list[tuple[tuple[float, ...], Mapping[str, Any]]] = []

    def add(self, point: tuple[float, ...], config: Mapping[str, Any]) -> bool:
        """Adds a point; whether the front changed (a point equal to or dominated by one already
        on it does not change it)."""
        if not all(math.isfinite(v) for v in point):
            return False
        for q, _ in self.points:
            if all(a <= b for a, b in zip(q, point, strict=True)):
                return False
        self.points = [
            (q, c) for q, c in self.points if not all(a <= b for a, b in zip(point, q, strict=True))
        ]
        self.points.append((point, config))
        return True

    def hypervolume(self) -> float:
        return hypervolume_2d([p for p, _ in self.points], self.hv.reference)

    def true_hypervolume(self) -> float | None:
        if self.hv.true_values is None:
            return None
        true = [self.hv.minimized(self.hv.true_values(c)) for _, c in self.points]
        return hypervolume_2d(true, self.hv.reference)


_UNIT = {"param_type": "uniform", "range": [0.0, 1.0]}


def _fidelity(t: float) -> float:
    return min(1.0, t / MAX_RESOURCE)


def zdt1_curves(c: Mapping[str, Any], t: float) -> tuple[float, float]:
    """``(f1, f2)`` of a configuration at resource ``t``, noise-free (both minimized)."""
    x = [float(c[f"x{i}"]) for i in range(4)]
    g = 1.0 + 2.0 * (x[1] + x[2] + x[3]) / 3.0
    r = _fidelity(t)
    tau = 1.0 + 10.0 * (1.0 - x[1]) ** 2
    f1 = x[0] + 0.3 * (1.0 - r) ** 2
    f2 = g * (1.0 - math.sqrt(x[0] / g)) + 0.6 * (1.0 - r) * math.exp(-t / tau)
    return f1, f2


def _zdt1_step(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    f1, f2 = zdt1_curves(c, t)
    return {"f1": f1, "f2": f2}, 1.0 + float(c["x3"])


def _xyz(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("x", "y", "z")}


def crossing_cost(c: Mapping[str, Any], t: float) -> tuple[float, float]:
    """``(error, size)`` of a configuration at resource ``t`` (both minimized)."""
    w = float(c["w"])
    return _crossing_loss(_xyz(c), t) + 0.3 * (1.0 - w) ** 2, w


def _crossing_cost_step(
    c: Mapping[str, Any], t: float, seed: int
) -> tuple[dict[str, float], float]:
    error, size = crossing_cost(c, t)
    return {"error": error, "size": size}, _cost(c) * (0.5 + float(c["w"]))


def _best_crossing_error() -> float:
    # x = 0.7, y = 0.3 are exact; z trades the distance to 0.5 against the learning term left at
    # max_resource, so its optimum is a hair off 0.5: found on a grid fine enough for 1e-9.
    return min(
        _crossing_loss({"x": 0.7, "y": 0.3, "z": 0.5 + i * 1e-6}, MAX_RESOURCE) for i in range(41)
    )


_E0 = _best_crossing_error()

MULTI: dict[str, MultiBenchmark] = {
    b.name: b
    for b in (
        MultiBenchmark(
            "zdt1-curves",
            _zdt1_step,
            {f"x{i}": dict(_UNIT) for i in range(4)},
            metrics=(("f1", "min"), ("f2", "min")),
            true_values=lambda c: zdt1_curves(c, MAX_RESOURCE),
            reference=(1.1, 3.1),
            front_hypervolume=2.1 + 2.0 / 3.0 + 0.31,
        ),
        MultiBenchmark(
            "curves-crossing-cost",
            _crossing_cost_step,
            {k: dict(_UNIT) for k in ("x", "y", "z", "w")},
            metrics=(("error", "min"), ("size", "min")),
            true_values=lambda c: crossing_cost(c, MAX_RESOURCE),
            reference=(1.0, 1.1),
            front_hypervolume=1.1 * (1.0 - _E0) - 0.1,
        ),
    )
}
