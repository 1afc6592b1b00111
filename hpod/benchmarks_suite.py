"""A wider benchmark suite for the simulator: kinds of learning curves hpod was not tuned on.

Each is a :class:`hpod.benchmarks.Benchmark` (``step(config, resource, seed) -> (metrics,
seconds)``, its space, its true objective at ``max_resource`` and the optimum of that), as the
built-ins of :mod:`hpod.benchmarks`; ``ALL`` has both. Deterministic: a report depends only on the
configuration, the level and the seed.

- ``powerlaw``: power-law curves ``a + b t^-c`` (asymptote, scale and rate each a function of the
  configuration: a high learning rate learns fast, the best asymptote wants a middle one), with
  noise that fades as the curve goes on. 4-D. The optimum was found numerically (see
  ``tests/test_benchmarks_suite.py``, which checks nothing beats it).
- ``slow-starters``: crossing curves whose rank at low levels is the reverse of the final one: the
  better a configuration's final loss, the higher it starts and the slower it learns, so at levels 1
  to 9 the worst configurations look best (the Spearman correlation of the level-1 reports with the
  true objective is negative). 4-D; optimum at a known point.
- ``cost-aware-7d``: a 7-D training-like space (``optimizer`` in sgd / adam / rmsprop, learning
  rate, momentum, weight decay, batch size, width, dropout). Each optimizer has its own good
  learning-rate window (SGD's best is the best overall but its window is narrow; Adam is more
  forgiving). Learning rates past an optimizer's limit diverge: the curve learns fast, then reports
  NaN from an epoch that comes sooner the further past the limit it is; just under the limit the
  loss gets worse after epoch 20; a wide, weakly regularized network overfits (its loss turns up).
  A step's cost grows with the width and shrinks with the batch size (0.3 to 20 seconds). A
  diverged configuration's true objective is chance (0.9). Optimum found numerically.
- ``lcdb-fried``: a replay of real learning curves from LCDB 1.0 (``lcdb`` 0.1.0's sdist; see
  ``bench/make_lcdb_data.py``, which writes ``hpod/data/lcdb-fried.json.gz``): the 20 scikit-learn
  classifiers of LCDB (default hyperparameters) on OpenML dataset 901 (``fried``). The
  configuration is the learner (one ``choice``), the resource the training-set size anchor (level k
  is the k-th of 24 anchors, 16 to 33,021 rows), the objective the validation error rate. A trial
  replays one of LCDB's 25 train/validation splits (chosen by the seed and the learner), so its
  reports carry the split's real noise; the true objective is the mean over the 25 splits at the
  largest anchor, and the optimum the best learner's. A step costs 1 s plus LCDB's mean training
  time at that anchor.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hpod.benchmarks import BUILTIN, Benchmark

MAX_RESOURCE = 81
DATA = Path(__file__).resolve().parent / "data"
LCDB_FILE = DATA / "lcdb-fried.json.gz"
CHANCE = 0.9  # the true objective of a diverged cost-aware-7d configuration


def _rng(config: Mapping[str, Any], resource: float, seed: int, salt: int) -> np.random.Generator:
    # Reproducible per (seed, configuration, level), whatever the order of the calls.
    key = zlib.crc32(json.dumps(dict(config), sort_keys=True).encode())
    return np.random.default_rng([seed, key, round(resource * 1000), salt])


def _unit(value: float, low: float, high: float) -> float:
    """A log-scaled value's place in [0, 1] between log10(low) and log10(high)."""
    return (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))


# -- powerlaw --------------------------------------------------------------------------------

POWERLAW_SPACE: dict[str, Any] = {
    "lr": {"param_type": "loguniform", "range": [1e-4, 1.0]},
    "weight_decay": {"param_type": "loguniform", "range": [1e-6, 1e-2]},
    "warmup": {"param_type": "uniform", "range": [0.0, 1.0]},
    "capacity": {"param_type": "uniform", "range": [0.0, 1.0]},
}


def _powerlaw_terms(c: Mapping[str, Any]) -> tuple[float, float, float]:
    """(asymptote a, scale b, rate c) of ``a + b t^-c``."""
    u = _unit(float(c["lr"]), 1e-4, 1.0)
    v = _unit(float(c["weight_decay"]), 1e-6, 1e-2)
    warmup, cap = float(c["warmup"]), float(c["capacity"])
    a = (
        0.05
        + 0.25 * ((u - 0.55) / 0.55) ** 2
        + 0.32 * (v - 0.5) ** 2
        + 0.2 * (cap - 0.7) ** 2
        - 0.03 * warmup
    )
    b = 0.6 + 0.4 * cap
    rate = (0.3 + 0.6 * u) * (1.0 - 0.2 * warmup)
    return a, b, rate


def _powerlaw_loss(c: Mapping[str, Any], t: float) -> float:
    a, b, rate = _powerlaw_terms(c)
    return a + b * math.pow(t, -rate)


def _powerlaw(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    sigma = 0.005 + 0.02 / math.sqrt(t)
    noise = float(_rng(c, t, seed, 1).normal(0.0, sigma))
    return {"loss": _powerlaw_loss(c, t) + noise}, 0.5 + 1.5 * float(c["capacity"])


# The minimum of the true objective (_powerlaw_loss at 81), found by scipy's L-BFGS-B from many
# starts in the unit cube; the test checks that no random or locally improved point beats it.
POWERLAW_ARGMIN: dict[str, float] = {
    "lr": 0.03213631323042087,
    "weight_decay": 9.999999812566655e-05,
    "warmup": 0.2354340213825463,
    "capacity": 0.6410447260880826,
}
POWERLAW_OPTIMUM = 0.0989905822921619


# -- slow-starters ---------------------------------------------------------------------------

SLOW_CENTER = (0.35, 0.7, 0.2, 0.55)
SLOW_SPACE: dict[str, Any] = {
    f"x{i}": {"param_type": "uniform", "range": [0.0, 1.0]} for i in range(len(SLOW_CENTER))
}


def _slow_q(c: Mapping[str, Any]) -> float:
    """0 at the best configuration, towards 1 far from it."""
    d2 = sum((float(c[f"x{i}"]) - x) ** 2 for i, x in enumerate(SLOW_CENTER))
    return 1.0 - math.exp(-d2 / 0.15)


def _slow_loss(c: Mapping[str, Any], t: float) -> float:
    # The gap above the final loss starts larger and closes more slowly the better the
    # configuration: at level 1 the loss is 0.75 - 0.3 q (the best look worst), the curves of
    # good and bad ones cross near level 9.
    q = _slow_q(c)
    return 0.1 + 0.3 * q + (0.65 - 0.6 * q) * math.exp(-(t - 1.0) / (12.0 - 6.0 * q))


def _slow(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    noise = float(_rng(c, t, seed, 2).normal(0.0, 0.01))
    return {"loss": _slow_loss(c, t) + noise}, 1.0 + float(c["x0"])


# -- cost-aware-7d ---------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "rmsprop")
COST_SPACE: dict[str, Any] = {
    "optimizer": {"param_type": "choice", "range": list(OPTIMIZERS)},
    "lr": {"param_type": "loguniform", "range": [1e-5, 1.0]},
    "momentum": {"param_type": "uniform", "range": [0.0, 0.99]},
    "weight_decay": {"param_type": "loguniform", "range": [1e-6, 1e-1]},
    "batch_size": {"param_type": "loguniform", "range": [16.0, 1024.0]},
    "width": {"param_type": "loguniform", "range": [32.0, 1024.0]},
    "dropout": {"param_type": "uniform", "range": [0.0, 0.8]},
}
# Per optimizer: (best log10 effective step, log10 limit past which it diverges, the width of its
# learning-rate basin (penalty per decade squared), its floor, its best log10 weight decay, the
# cost factor of a step).
_OPT: dict[str, tuple[float, float, float, float, float, float]] = {
    "sgd": (-0.7, 0.3, 0.03, 0.045, -3.5, 1.0),
    "adam": (-3.0, -1.0, 0.012, 0.06, -4.5, 1.15),
    "rmsprop": (-3.2, -1.5, 0.015, 0.065, -4.5, 1.1),
}


def _cost_terms(c: Mapping[str, Any]) -> dict[str, float]:
    opt = str(c["optimizer"])
    best, limit, basin, floor, best_wd, _ = _OPT[opt]
    lr, m = float(c["lr"]), float(c["momentum"])
    batch, width, dropout = float(c["batch_size"]), float(c["width"]), float(c["dropout"])
    w = math.log10(float(c["weight_decay"]))
    # The effective step: larger batches take larger steps; SGD's momentum multiplies its step
    # by 1 / (1 - m), RMSprop's a little.
    eff = math.log10(lr) + 0.5 * math.log10(128.0 / batch)
    if opt == "sgd":
        eff -= math.log10(1.0 - m)
    elif opt == "rmsprop":
        eff += math.log10(1.0 + m)
    d = eff - best
    cap = math.log2(width / 32.0) / 5.0  # 0 (width 32) to 1 (1024)
    reg = dropout / 0.8
    asym = (
        floor
        + min(0.5, basin * d * d * (2.0 if d > 0 else 1.0))
        + 0.01 * (w - best_wd) ** 2
        + 0.12 * max(0.0, 0.65 - cap) ** 2 / 0.4225
        + 0.05 * max(0.0, reg - 0.5) ** 2 / 0.25
    )
    overfit = 0.1 * max(0.0, cap - 0.4 - 0.6 * reg - 0.3 * (w + 6.0) / 5.0)
    tau = (3.0 * 10.0 ** (0.6 * -d) if d < 0 else 3.0 / (1.0 + d)) * math.sqrt(batch / 128.0)
    tau *= 1.0 + 0.5 * reg
    return {"eff": eff, "excess": eff - limit, "asym": asym, "overfit": overfit, "tau": tau}


def _cost_loss(c: Mapping[str, Any], t: float) -> float:
    k = _cost_terms(c)
    excess = k["excess"]
    # Diverged: NaN from an epoch that comes sooner the further past the limit.
    if excess > 0 and t >= 1.0 + math.floor(40.0 * math.exp(-4.0 * excess)):
        return math.nan
    loss = (
        k["asym"]
        + k["overfit"] * (1.0 - math.exp(-t / 25.0))
        + (CHANCE - k["asym"]) * math.exp(-t / k["tau"])
    )
    if -0.3 < excess <= 0:
        # Just under the limit: unstable, worse after epoch 20.
        loss += 0.15 * ((excess + 0.3) / 0.3) ** 2 * max(0.0, t - 20.0) / 61.0
    return min(loss, CHANCE)


def _cost_true(c: Mapping[str, Any]) -> float:
    value = _cost_loss(c, MAX_RESOURCE)
    return CHANCE if math.isnan(value) else value


def _cost_seconds(c: Mapping[str, Any]) -> float:
    width, batch = float(c["width"]), float(c["batch_size"])
    factor = _OPT[str(c["optimizer"])][5]
    return (0.3 + 2.0 * math.pow(width / 256.0, 1.2) * math.pow(128.0 / batch, 0.25)) * factor


def _cost(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    loss = _cost_loss(c, t)
    if not math.isnan(loss):
        loss += float(_rng(c, t, seed, 3).normal(0.0, 0.008))
    return {"loss": loss}, _cost_seconds(c)


# Every term of the loss is at least 0 above SGD's floor, 0.045, and this configuration reaches it
# (its step is SGD's best, no overfitting, the rest of the curve e^-22 of the way): the optimum.
COST_ARGMIN: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 10.0**-0.7,
    "momentum": 0.0,
    "weight_decay": 10.0**-3.5,
    "batch_size": 128.0,
    "width": 512.0,
    "dropout": 0.36,
}
COST_OPTIMUM = _OPT["sgd"][3]


# -- lcdb-fried ------------------------------------------------------------------------------


@functools.cache
def lcdb() -> dict[str, Any]:
    """The replayed curves (``bench/make_lcdb_data.py`` describes the file), read on first use."""
    with gzip.open(LCDB_FILE, "rt", encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


@functools.cache
def _lcdb_index() -> dict[str, int]:
    return {name: i for i, name in enumerate(lcdb()["learners"])}


def _lcdb_split(learner: str, seed: int) -> int:
    # Which of the 25 splits a (seed, learner) replays: fixed for the pair, so a trial's reports
    # are one split's curve, and a repeat of the learner on the same seed the same curve.
    n = len(lcdb()["splits"])
    return int(np.random.default_rng([seed, zlib.crc32(learner.encode())]).integers(n))


def _lcdb_step(c: Mapping[str, Any], t: float, seed: int) -> tuple[dict[str, float], float]:
    data, learner = lcdb(), str(c["learner"])
    i = _lcdb_index()[learner]
    k = min(len(data["anchors"]), max(1, round(t))) - 1
    err = float(data["error"][i][k][_lcdb_split(learner, seed)])
    return {"error": err}, 1.0 + float(data["traintime"][i][k])


def lcdb_true(c: Mapping[str, Any]) -> float:
    """The mean validation error over LCDB's 25 splits at the largest anchor."""
    errors = lcdb()["error"][_lcdb_index()[str(c["learner"])]][-1]
    return float(np.mean(errors))


def _lcdb_benchmark() -> Benchmark:
    # The learners and anchors come from the data file; read it only when the suite is built.
    data = lcdb()
    return Benchmark(
        "lcdb-fried",
        _lcdb_step,
        {"learner": {"param_type": "choice", "range": list(data["learners"])}},
        metric="error",
        max_resource=len(data["anchors"]),
        true_value=lcdb_true,
        optimum=min(lcdb_true({"learner": name}) for name in data["learners"]),
    )


def _true_at(
    loss: Callable[[Mapping[str, Any], float], float],
) -> Callable[[Mapping[str, Any]], float]:
    def true(c: Mapping[str, Any]) -> float:
        return loss(c, MAX_RESOURCE)

    return true


SUITE: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "powerlaw",
            _powerlaw,
            POWERLAW_SPACE,
            true_value=_true_at(_powerlaw_loss),
            optimum=POWERLAW_OPTIMUM,
        ),
        Benchmark(
            "slow-starters",
            _slow,
            SLOW_SPACE,
            true_value=_true_at(_slow_loss),
            optimum=0.1 + 0.65 * math.exp(-(MAX_RESOURCE - 1.0) / 12.0),
        ),
        Benchmark(
            "cost-aware-7d",
            _cost,
            COST_SPACE,
            true_value=_cost_true,
            optimum=COST_OPTIMUM,
        ),
        _lcdb_benchmark(),
    )
}

# Every benchmark of one objective: the built-ins of hpod.benchmarks and this suite.
ALL: dict[str, Benchmark] = {**BUILTIN, **SUITE}
