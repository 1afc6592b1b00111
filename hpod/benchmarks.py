"""Built-in benchmarks for the simulator: learning curves one can compute instead of train.

A benchmark is ``step(config, resource, seed) -> (metrics, seconds)``: the metrics a trial would
report at that resource level and what that one step costs. The built-ins also know their true
objective (the noise-free value at ``max_resource``) and its optimum, so the simulator can give
the regret of the configuration a study would answer with.

- ``curves-parallel``: curves that never cross (the ranking at any level is the final one).
- ``curves-crossing``: ``z`` acts like a learning rate: fast learners (high z) lead at low levels,
  the best ones (z = 0.5) learn more slowly, so the curves of near-optimal configurations cross.
- ``curves-noisy``: parallel curves with Gaussian noise (sigma 0.05) on every report.
- ``hartmann3``, ``hartmann6``: the multi-fidelity Hartmann functions of Kandasamy et al. 2017
  (BOCA): alpha' = alpha - 0.1 (1 - z) at fidelity z = resource / max_resource, plus Gaussian noise
  (sigma 0.05 (1 - z)) that fades as the fidelity grows. Minimized; optimum -3.86278 and -3.32237.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

StepFn = Callable[[Mapping[str, Any], float, int], tuple[dict[str, float], float]]

MAX_RESOURCE = 81


@dataclass(frozen=True)
class Benchmark:
    name: str
    step: StepFn
    space: Mapping[str, Any]  # a [space] table, as in a spec
    metric: str = "loss"
    mode: str = "min"
    max_resource: int = MAX_RESOURCE
    true_value: Callable[[Mapping[str, Any]], float] | None = None
    optimum: float | None = None

    def __call__(
        self, config: Mapping[str, Any], resource: float, seed: int
    ) -> tuple[dict[str, float], float]:
        return self.step(config, resource, seed)

    def spec_mapping(self, scheduler: Mapping[str, Any], *, seed: int = 0) -> dict[str, Any]:
        """A study spec (as parsed TOML) for this benchmark with the given [scheduler] table."""
        return {
            "name": self.name,
            "command": ["true"],
            "objective": {"metric": self.metric, "mode": self.mode, "resource": "epoch"},
            "space": dict(self.space),
            "scheduler": {"max_resource": self.max_resource, **scheduler},
            "searcher": {"type": "random", "seed": seed},
        }


def _noise(config: Mapping[str, Any], resource: float, seed: int) -> np.random.Generator:
    # Reproducible per (seed, configuration, level) whatever the order of the calls.
    key = zlib.crc32(json.dumps(dict(config), sort_keys=True).encode())
    return np.random.default_rng([seed, key, round(resource * 1000)])


_XYZ = {k: {"param_type": "uniform", "range": [0.0, 1.0]} for k in ("x", "y", "z")}


def _quality(c: Mapping[str, Any]) -> float:
    """0 for the best configuration, 1 for the worst ones."""
    d2 = (float(c["x"]) - 0.7) ** 2 + (float(c["y"]) - 0.3) ** 2 + (float(c["z"]) - 0.5) ** 2
    return min(1.0, d2 / 0.3)


def _final(c: Mapping[str, Any]) -> float:
    return 0.1 + 0.5 * _quality(c)


def _cost(c: Mapping[str, Any]) -> float:
    # Configurations differ in speed, so the workers fall out of step as real ones do.
    return 1.0 + float(c["z"])


def _parallel_loss(c: Mapping[str, Any], t: float) -> float:
    return _final(c) + 0.8 * float((1.0 + t) ** -0.7)


def _parallel(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    return {"loss": _parallel_loss(c, t)}, _cost(c)


def _tau(c: Mapping[str, Any]) -> float:
    # z acts like a learning rate: high z learns fast, and z = 0.5 (the optimum) is not the fastest.
    return 1.0 + 20.0 * (1.0 - float(c["z"])) ** 2


def _crossing_loss(c: Mapping[str, Any], t: float) -> float:
    return _final(c) + 0.6 * math.exp(-t / _tau(c))


def _crossing(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    return {"loss": _crossing_loss(c, t)}, _cost(c)


def _noisy(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    noise = float(_noise(c, t, seed).normal(0.0, 0.05))
    return {"loss": _parallel_loss(c, t) + noise}, _cost(c)


_H_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H3_A = np.array([[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]])
_H3_P = 1e-4 * np.array(
    [[3689, 1170, 2673], [4699, 4387, 7470], [1091, 8732, 5547], [381, 5743, 8828]]
)
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def hartmann(x: np.ndarray[Any, Any], z: float = 1.0) -> float:
    """Hartmann 3 or 6 (by ``len(x)``) at fidelity ``z`` in [0, 1] (1: the true function)."""
    a, p = (_H3_A, _H3_P) if len(x) == 3 else (_H6_A, _H6_P)
    alpha = _H_ALPHA - 0.1 * (1.0 - z)
    inner = np.sum(a * (x[None, :] - p) ** 2, axis=1)
    return float(-np.sum(alpha * np.exp(-inner)))


def _hartmann_step(d: int) -> StepFn:
    def step(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
        x = np.array([float(c[f"x{i}"]) for i in range(d)])
        z = min(1.0, t / MAX_RESOURCE)
        noise = float(_noise(c, t, seed).normal(0.0, 0.05 * (1.0 - z)))
        return {"loss": hartmann(x, z) + noise}, 1.0 + float(x[0])

    return step


def _hartmann_true(d: int) -> Callable[[Mapping[str, Any]], float]:
    def true(c: Mapping[str, Any]) -> float:
        return hartmann(np.array([float(c[f"x{i}"]) for i in range(d)]))

    return true


def _unit_space(d: int) -> dict[str, Any]:
    return {f"x{i}": {"param_type": "uniform", "range": [0.0, 1.0]} for i in range(d)}


BUILTIN: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "curves-parallel",
            _parallel,
            _XYZ,
            true_value=lambda c: _parallel_loss(c, MAX_RESOURCE),
            optimum=0.1 + 0.8 * (1.0 + MAX_RESOURCE) ** -0.7,
        ),
        Benchmark(
            "curves-crossing",
            _crossing,
            _XYZ,
            true_value=lambda c: _crossing_loss(c, MAX_RESOURCE),
            optimum=_crossing_loss({"x": 0.7, "y": 0.3, "z": 0.5}, MAX_RESOURCE),
        ),
        Benchmark(
            "curves-noisy",
            _noisy,
            _XYZ,
            true_value=lambda c: _parallel_loss(c, MAX_RESOURCE),
            optimum=0.1 + 0.8 * (1.0 + MAX_RESOURCE) ** -0.7,
        ),
        Benchmark(
            "hartmann3",
            _hartmann_step(3),
            _unit_space(3),
            true_value=_hartmann_true(3),
            optimum=-3.86278,
        ),
        Benchmark(
            "hartmann6",
            _hartmann_step(6),
            _unit_space(6),
            true_value=_hartmann_true(6),
            optimum=-3.32237,
        ),
    )
}
