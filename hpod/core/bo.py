"""Bayesian optimization: a GP on the unit-cube encoding proposes each new configuration.

``points_to_evaluate`` first, then ``num_init_trials`` random configurations, then the argmax of the
acquisition (``ucb``: mean - kappa * sd for a loss, kappa decayed as OTX's hpopt does after
``kappa_decay_delay`` suggestions; or ``ei``) over a few hundred random candidates and local moves
around the best points seen. With a rung scheduler the observations come from many resource levels:
the model is of the highest level that at least ``min_points`` configurations have reached (as
BOHB and MOBSTER do), so it proposes the configurations that ASHA and Hyperband start.

The GP is fitted off the decision path (:mod:`hpod.core.models`): ``wants_fit`` hands out the data,
``install`` takes the model back, ``suggest`` uses whatever model is installed, or draws at random
while none is. Trials that started but have not reached the model's level are "pending": the model
is conditioned on them at their predicted mean (kriging believer, hyperparameters kept), so four
workers asking in a row do not get four copies of one configuration.

Deterministic: candidates are drawn from (seed, trial number); given the same installed model and
history, trial n gets the same configuration.

Several objectives (``scalarize``): ParEGO (Knowles 2006). Each fit draws a weight vector
uniformly from the simplex (seeded by the seed and the number of observations, so a restored
study draws the same) and fits the GP to the augmented Chebyshev scalarization of the metrics,
each normalized to [0, 1] over the values seen: ``max_i(w_i f_i) + 0.05 * sum_i(w_i f_i)``. A
new weight each fit aims each proposal at another part of the front; the model's weights stay
with it, so proposals are scored with the weights it was fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from hpod.core.gp import GP, Array, fit_gp, log_expected_improvement, matern52
from hpod.core.history import points_by_config
from hpod.core.models import FitRequest, Owner, refit_due
from hpod.core.plans import Observation, Suggestion
from hpod.core.space import Config, ParamValue, SearchSpace
from hpod.core.spec import Acquisition

PAREGO_RHO = 0.05  # ParEGO's augmentation: keeps weakly dominated points below the front's
MAX_POINTS = 256  # the model's training set at most: the most recent configurations
MAX_PENDING = 32  # pending configurations the model is conditioned on
N_RANDOM = 512
N_LOCAL = 128


@dataclass(frozen=True)
class LevelData:
    """The configurations that reached one resource level and their values there (as losses)."""

    level: float
    configs: tuple[Mapping[str, ParamValue], ...]
    losses: tuple[float, ...]
    pending: tuple[Mapping[str, ParamValue], ...]  # seen below the level, recent first


def level_data(
    history: Sequence[Observation],
    *,
    maximize: bool,
    min_points: int,
    level: float | None = None,
) -> LevelData | None:
    """The highest level with at least ``min_points`` configurations (or the given ``level``):
    each one's value there is its last report at or below the level, from those whose curve
    reached it. An observation at resource 0 with a NaN value only says the configuration was
    launched (see :class:`~hpod.core.plans.Observation`)."""
    by_config, configs = points_by_config(history)
    if level is None:
        tops = sorted(
            (max((r for r, _ in pts), default=0.0) for pts in by_config.values()), reverse=True
        )
        if len(tops) < min_points or tops[min_points - 1] <= 0:
            return None
        level = tops[min_points - 1]  # the highest level min_points configurations reached
    chosen: list[tuple[Mapping[str, ParamValue], float]] = []
    pending: list[Mapping[str, ParamValue]] = []
    worst = -math.inf
    for key, pts in by_config.items():
        upto = [(r, v) for r, v in pts if r <= level]
        if not pts or max(r for r, _ in pts) < level:
            pending.append(configs[key])
            continue
        value = sorted(upto)[-1][1] if upto else sorted(pts)[0][1]
        loss = -value if maximize else value
        if math.isfinite(loss):
            worst = max(worst, loss)
        chosen.append((configs[key], loss))
    # A diverged run (NaN, inf) counts as the worst seen, not as a hole in the data; where every
    # run at the level diverged (cost-aware-7d's top level, early in a Hyperband study), they
    # are all as bad: one constant (the GP fit failed on -inf).
    if worst == -math.inf:
        worst = 0.0
    fixed = [(c, v if math.isfinite(v) else worst) for c, v in chosen]
    fixed = fixed[-MAX_POINTS:]
    return LevelData(
        level,
        tuple(c for c, _ in fixed),
        tuple(v for _, v in fixed),
        tuple(reversed(pending))[:MAX_PENDING],
    )


def fit_level_gp(request: FitRequest, between_steps: Callable[[], None] | None = None) -> GP:
    """The fitting function of a BO request (see :func:`hpod.core.models.fit`); a few
    milliseconds, so it has no steps to pause between."""
    return fit_gp(request.data["x"], request.data["y"], seed=request.seed)


class BOSearcher:
    """A GP-based searcher; see the module's docstring."""

    needs_history = True  # each fit's data and the pending configurations come from it

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        points_to_evaluate: Sequence[Mapping[str, ParamValue]] = (),
        *,
        maximize: bool = False,
        num_init_trials: int = 5,
        acquisition: Acquisition = Acquisition.UCB,
        kappa: float = 2.0,
        kappa_decay: float = 1.0,
        kappa_decay_delay: int = 0,
        scalarize: bool = False,
        random_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= random_fraction < 1.0:
            raise ValueError(f"random_fraction must be in [0, 1), got {random_fraction}")
        self.space = space
        self.seed = seed
        self.points = tuple(space.normalize(p) for p in points_to_evaluate)
        self.maximize = maximize
        self.num_init = max(1, num_init_trials)
        self.min_points = max(self.num_init, 3)
        self.acquisition = acquisition
        self.kappa = kappa
        self.kappa_decay = kappa_decay
        self.kappa_decay_delay = kappa_decay_delay
        self.model: GP | None = None
        self.model_level: float | None = None
        self.scalarize = scalarize
        self.random_fraction = random_fraction
        self.weights: tuple[float, ...] | None = None  # the installed model's (scalarize)
        self._asked: tuple[float, int] = (-1.0, 0)  # (level, points) of the last request

    # -- fits ------------------------------------------------------------------------------------

    def wants_fit(self, history: Sequence[Observation]) -> FitRequest | None:
        weights: tuple[float, ...] | None = None
        if self.scalarize:
            weights = parego_weights(history, self.seed)
            history = scalarized(history, weights)
        data = level_data(
            history, maximize=self.maximize and not self.scalarize, min_points=self.min_points
        )
        if data is None:
            return None
        n = len(data.configs)
        level, last_n = self._asked
        if data.level == level and not refit_due(n, last_n):
            return None
        self._asked = (data.level, n)
        x = np.stack([self.space.encode(c) for c in data.configs])
        y = np.asarray(data.losses, dtype=np.float64)
        return FitRequest(
            "hpod.core.bo:fit_level_gp",
            owner=Owner.SEARCHER,
            key=("bo", data.level, n),
            seed=self.seed,
            data={"x": x, "y": y, "level": data.level, "weights": weights},
        )

    def install(self, request: FitRequest, model: Any) -> None:
        assert isinstance(model, GP)
        self.model = model
        self.model_level = float(request.data["level"])
        self.weights = request.data.get("weights")

    # -- suggestions -----------------------------------------------------------------------------

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        if number < 0:
            raise ValueError(f"trial numbers start at 0, got {number}")
        if number < len(self.points):
            return Suggestion(dict(self.points[number]), how="random")
        rng = np.random.default_rng([self.seed, number])
        start = len(self.points) + self.num_init
        if (
            self.model is None
            or number < start
            or _random_turn(number - start, self.random_fraction)
        ):
            return Suggestion(self.space.sample(rng), how="random")
        return Suggestion(self._propose(number, history, rng), how="model")

    def _kappa(self, number: int) -> float:
        # OTX's hpopt (bayes_opt's UtilityFunction): kappa *= kappa_decay once per suggestion
        # after the first kappa_decay_delay ones.
        steps = max(0, number + 1 - self.kappa_decay_delay)
        return self.kappa * self.kappa_decay**steps if self.kappa_decay < 1.0 else self.kappa

    def _propose(
        self, number: int, history: Sequence[Observation], rng: np.random.Generator
    ) -> Config:
        gp = self.model
        assert gp is not None
        assert self.model_level is not None
        if self.scalarize and self.weights is not None:
            history = scalarized(history, self.weights)
        data = level_data(
            history,
            maximize=self.maximize and not self.scalarize,
            min_points=1,
            level=self.model_level,
        )
        pending = [] if data is None else list(data.pending)
        cands = self._candidates(gp, rng)
        at = np.stack([self.space.encode(c) for c in pending]) if pending else None
        mu, var = _believer(gp, at, cands)
        if self.acquisition is Acquisition.EI:
            score = log_expected_improvement(mu, var, gp.best_y)
        else:
            score = -(mu - self._kappa(number) * np.sqrt(var))
        return self.space.decode(cands[int(np.argmax(score))])

    def _candidates(self, gp: GP, rng: np.random.Generator) -> Array:
        rand = self.space.sample_encoded(rng, N_RANDOM)
        # Local moves around the best points the model was fitted on: most of the gain of a
        # proper acquisition optimizer for a fraction of its cost.
        top = gp.x[np.argsort(gp.y, kind="stable")[:8]]
        return np.concatenate([rand, self.space.neighbours(top, N_LOCAL, 0.08, rng)])


def _random_turn(k: int, fraction: float) -> bool:
    """Whether the k-th suggestion after the random start is drawn at random as well: evenly
    spread, ``fraction`` of them (0.25: the 4th, 8th, ...), a function of k only, so a restored
    study draws the same. As BOHB's random fraction: a model fitted to a few levels' data keeps
    proposing near what it has seen, and the random ones keep the search as wide as random
    search's where the low rungs rank right (bench/results/quality.md, powerlaw)."""
    return math.floor((k + 1) * fraction + 1e-9) > math.floor(k * fraction + 1e-9)


def parego_weights(history: Sequence[Observation], seed: int) -> tuple[float, ...]:
    """ParEGO's weights for the next fit: uniform on the simplex, drawn from (seed, the number of
    observations), so the same history gets the same weights."""
    k = next((len(o.vector) for o in history if o.vector is not None), 2)
    rng = np.random.default_rng([seed, 0x9A5E, len(history)])
    return tuple(float(w) for w in rng.dirichlet(np.ones(k)))


def scalarized(history: Sequence[Observation], weights: Sequence[float]) -> list[Observation]:
    """The observations with ``value`` the augmented Chebyshev scalarization of their (loss)
    vectors, each metric normalized to [0, 1] over the finite values seen; a vector with a
    non-finite entry scalarizes to NaN (level_data then counts it as the worst seen). Launch
    markers (resource 0, no vector) stay as they are."""
    vectors = [o.vector for o in history if o.vector is not None]
    k = len(weights)
    lo = [min((v[i] for v in vectors if math.isfinite(v[i])), default=0.0) for i in range(k)]
    hi = [max((v[i] for v in vectors if math.isfinite(v[i])), default=1.0) for i in range(k)]
    out: list[Observation] = []
    for o in history:
        if o.vector is None:
            out.append(o)
            continue
        out.append(Observation(o.config, o.resource, chebyshev(o.vector, weights, lo, hi)))
    return out


def chebyshev(
    vector: Sequence[float],
    weights: Sequence[float],
    lo: Sequence[float],
    hi: Sequence[float],
) -> float:
    """ParEGO's augmented Chebyshev scalarization of a loss vector, each metric normalized by
    [lo, hi] first; NaN when an entry is not finite."""
    if not all(math.isfinite(x) for x in vector):
        return math.nan
    f = [
        w * ((x - a) / (b - a) if b > a else 0.0)
        for w, x, a, b in zip(weights, vector, lo, hi, strict=True)
    ]
    return max(f) + PAREGO_RHO * math.fsum(f)


def _believer(gp: GP, pending: Array | None, xs: Array) -> tuple[Array, Array]:
    """Predictions at ``xs`` after conditioning on ``pending`` at the model's own mean there:
    the mean stays, the variance shrinks near configurations already running."""
    if pending is None or len(pending) == 0:
        return gp.predict(xs)
    mu, _ = gp.predict(xs)
    p = gp.params
    allx = np.concatenate([gp.x, pending])
    k = matern52(allx, allx, p.lengthscales, p.signal) + (p.noise + 1e-8) * np.eye(len(allx))
    try:
        chol = linalg.cholesky(k, lower=True)
    except linalg.LinAlgError:
        return gp.predict(xs)
    ks = matern52(xs, allx, p.lengthscales, p.signal)
    v = linalg.solve_triangular(chol, ks.T, lower=True)
    var = np.maximum(p.signal - (v * v).sum(0), 1e-12) * gp.y_std**2
    return mu, var
