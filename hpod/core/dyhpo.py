"""DyHPO (Wistuba, Kadra, Grabocka, NeurIPS 2022): at every free slot, resume a paused trial for one
more rung or start a new configuration, whichever has the larger expected improvement.

With probability ``probability_sh`` the ASHA promotion rule is tried first (as Syne Tune's DyHPO
does): a trial within its rung's quota is resumed without asking the model. Otherwise every paused
trial is scored at its next rung, and ``n_candidates`` random new configurations at the first rung,
by the expected improvement over the best value seen at that level, under the paper's deep-kernel
GP: an MLP over (configuration, budget), a small 1-D convolution over the learning curve so far,
their features into a GP with an RBF kernel, all trained jointly on the marginal likelihood.

The model is fitted off the decision path (:mod:`hpod.core.models`): ``wants_fit`` hands out the
training set (one row per trial and rung it reached: its configuration, the rung, its curve below
the rung, its value at the rung), :func:`hpod.fit.dyhpo_torch.fit_deep_kernel` trains it in torch,
in whichever process runs the fit, and returns plain numpy weights (:class:`DeepKernel`). Scoring
here is numpy only, so deciding never imports torch. While no model is installed the scheduler is
ASHA (promotion type). Once the study may start no new trial the ASHA rule (final quotas) decides
alone, so a study with ``max_trials`` ends the way ASHA's does instead of resuming every paused
trial to ``max_resource``.

A configuration a trial already has is never started again: when the model's best candidate is
one, that trial is resumed instead (paused below max_resource) or the candidate dropped, and the
random starts come from :class:`hpod.core.searchers.DistinctSearcher`.

Deterministic: the coin and the candidates are drawn from (seed, the number of trials, the
resources launched so far), all of which a restored study has.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import linalg

from hpod.core.asha import RungScheduler
from hpod.core.bo import chebyshev
from hpod.core.gp import Array, log_expected_improvement, robust_cholesky
from hpod.core.models import FitRequest, Owner, refit_due
from hpod.core.objective import Objective
from hpod.core.plans import NewTrial, Plan, Promote, StudyView, TrialView, config_key
from hpod.core.space import ParamType, SearchSpace
from hpod.core.states import Decision, TrialState

CURVE_LEN = 32  # the curve the convolution sees, resampled onto this many resource points
N_CANDIDATES = 256
# Local moves join the random candidates above this many encoded dimensions: 256 random points
# are then fewer than 4 a side, and the neighbourhood of the best configurations is mostly unseen.
# hartmann6 (6 dimensions), 5 seeds: regret 0.3154 -> 0.2438 on seeds 0-4, 0.5072 -> 0.1914 on
# seeds 5-9; in 3 dimensions they helped nowhere for sure and lost on hartmann3 (0.0133 -> 0.0376,
# seeds 5-9: stuck in its local minimum), so they stay off there (docs/models.md).
LOCAL_ABOVE_DIM = 4
N_LOCAL = 64
LOCAL_SD = 0.1
# A local move changes each `choice` to another value with this chance: around the best five
# configurations a Gaussian step alone keeps their values, and the other values were never scored.
LOCAL_FLIP = 0.25
# The chance that a model start is held to each choice's least-tried value (see score).
CHOICE_EXPLORE = 0.5
# Bounds on the work of a fit and of a decision as the study grows (measured: docs/models.md).
MAX_ROWS = 384
CONDITION_ROWS = 256
PAUSED_PER_RUNG = 32


class Surrogate(Protocol):
    """What scoring needs of a model: predictions for encoded inputs, in standardized loss."""

    def predict(self, x: Array, budget: Array, curve: Array) -> tuple[Array, Array]: ...

    def condition(self, x: Array, budget: Array, curve: Array, y: Array) -> Surrogate:
        """The same fitted model, its posterior on these observations (``y`` as normalized by
        the study's range, as in a fit's request) instead of its training set's."""
        ...

    @property
    def y_mean(self) -> float: ...
    @property
    def y_std(self) -> float: ...


@dataclass(frozen=True)
class DeepKernel:
    """A fitted deep-kernel GP as numpy arrays: the feature network's weights, the GP's
    hyperparameters, and the training features' factors."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array
    wc: Array  # (channels out, 2, width): the curve convolution over (value, mask)
    bc: Array
    w3: Array
    b3: Array
    lengthscale: float
    signal: float
    noise: float
    mean: float
    y_mean: float  # targets were standardized with these
    y_std: float
    train_z: Array  # the training features
    chol: Array
    alpha: Array
    # Predicted variances are multiplied by this: the mean squared standardized error the fit
    # measured on rows it held out of training (hpod.fit.dyhpo_torch), so that the spread the
    # acquisition sees is as wide as the model's real errors.
    var_scale: float = 1.0

    def features(self, x: Array, budget: Array, curve: Array) -> Array:
        return features(self, x, budget, curve)

    def predict(self, x: Array, budget: Array, curve: Array) -> tuple[Array, Array]:
        """Mean and variance of the standardized loss at each input."""
        z = self.features(x, budget, curve)
        ks = rbf(z, self.train_z, self.lengthscale, self.signal)
        mu = self.mean + ks @ self.alpha
        v = linalg.solve_triangular(self.chol, ks.T, lower=True)
        var = np.maximum(self.signal - (v * v).sum(0), 1e-12) * self.var_scale
        return mu, var

    def condition(self, x: Array, budget: Array, curve: Array, y: Array) -> DeepKernel:
        z = self.features(x, budget, curve)
        k = rbf(z, z, self.lengthscale, self.signal)
        chol = robust_cholesky(k + (self.noise + 1e-6) * np.eye(len(z)))
        ys = (y - self.y_mean) / self.y_std
        alpha = linalg.cho_solve((chol, True), ys - self.mean)
        return replace(self, train_z=z, chol=chol, alpha=alpha)


class _Weights(Protocol):
    @property
    def w1(self) -> Array: ...
    @property
    def b1(self) -> Array: ...
    @property
    def w2(self) -> Array: ...
    @property
    def b2(self) -> Array: ...
    @property
    def wc(self) -> Array: ...
    @property
    def bc(self) -> Array: ...
    @property
    def w3(self) -> Array: ...
    @property
    def b3(self) -> Array: ...


def features(w: _Weights, x: Array, budget: Array, curve: Array) -> Array:
    """The feature network, in numpy; :mod:`hpod.fit.dyhpo_torch` is the same network in torch."""
    u = np.concatenate([x, budget[:, None]], axis=1)
    h = np.maximum(u @ w.w1.T + w.b1, 0.0)
    h = np.maximum(h @ w.w2.T + w.b2, 0.0)
    windows = sliding_window_view(curve, w.wc.shape[2], axis=2)  # (m, 2, T, width)
    conv = np.einsum("mctk,ock->mot", windows, w.wc) + w.bc[None, :, None]
    pooled = np.maximum(conv, 0.0).max(axis=2)
    out: Array = np.concatenate([h, pooled], axis=1) @ w.w3.T + w.b3
    return out


def rbf(a: Array, b: Array, lengthscale: float, signal: float) -> Array:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    out: Array = signal * np.exp(-0.5 * np.maximum(d2, 0.0) / lengthscale**2)
    return out


def curve_input(
    curve: Mapping[float, float],
    below: float,
    max_resource: float,
    lo: float,
    span: float,
    maximize: bool,
) -> Array:
    """The (value, mask) channels the convolution sees: the losses reported strictly below
    ``below``, normalized to [0, 1] by the study's range, at CURVE_LEN resource points spread up
    to ``max_resource`` (each point takes the last report at or under it)."""
    raw = raw_curve(curve, below, max_resource, maximize)[None]
    out: Array = normalize_curves(raw, lo, span)[0]
    return out


def raw_curve(
    curve: Mapping[float, float], below: float, max_resource: float, maximize: bool
) -> Array:
    """:func:`curve_input` before the normalization: the losses as reported (0 where the mask,
    the second channel, is 0). A trial's curve below a level never changes, the study's range
    does: this is what is kept, and :func:`normalize_curves` is vectorized."""
    out = np.zeros((2, CURVE_LEN))
    points = [(r, -v if maximize else v) for r, v in curve.items() if r < below]
    if not points:
        return out
    k = 0
    last: float | None = None
    for i in range(CURVE_LEN):
        at = max_resource * (i + 1) / CURVE_LEN
        while k < len(points) and points[k][0] <= at + 1e-9:
            last = points[k][1]
            k += 1
        if last is not None and at < below + 1e-9:
            out[0, i] = last
            out[1, i] = 1.0
    return out


def normalize_curves(raw: Array, lo: float, span: float) -> Array:
    """Raw curves (m, 2, CURVE_LEN) normalized to [0, 1] by the range (a non-finite loss as 1)."""
    values, mask = raw[:, 0], raw[:, 1]
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(np.isfinite(values), np.clip((values - lo) / span, 0.0, 1.0), 1.0)
    out = np.zeros_like(raw)
    out[:, 0] = np.where(mask > 0, scaled, 0.0)
    out[:, 1] = mask
    return out


@dataclass(frozen=True)
class _Scalarization:
    """Several objectives: the ParEGO scalarization one fit was made with (hpod.core.bo)."""

    weights: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __call__(self, vector: Sequence[float]) -> float:
        return chebyshev(vector, self.weights, self.lo, self.hi)


@dataclass(frozen=True)
class _Row:
    x: Array
    level: float
    curve: Mapping[float, float]
    loss: float
    raw: Array  # the curve below the level as the model takes it, before normalizing (raw_curve)


def _rank(loss: float) -> float:
    return loss if math.isfinite(loss) else math.inf


class _Rows:
    """The (trial, rung) rows, and what decisions need of them without walking them all: each
    level's rows by loss and by trial, the lowest and highest finite loss, a version that moves
    with every change."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, float], _Row] = {}
        self.by_loss: dict[float, list[tuple[float, int]]] = {}
        self.by_trial: dict[float, list[int]] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: tuple[int, float]) -> bool:
        return key in self.rows

    def add(self, key: tuple[int, float], row: _Row) -> None:
        self.rows[key] = row
        bisect.insort(self.by_loss.setdefault(row.level, []), (_rank(row.loss), key[0]))
        bisect.insort(self.by_trial.setdefault(row.level, []), key[0])
        self.version += 1

    def remove(self, key: tuple[int, float]) -> None:
        row = self.rows.pop(key)
        losses, trials = self.by_loss[row.level], self.by_trial[row.level]
        del losses[bisect.bisect_left(losses, (_rank(row.loss), key[0]))]
        del trials[bisect.bisect_left(trials, key[0])]
        if not trials:
            del self.by_loss[row.level], self.by_trial[row.level]
        self.version += 1

    def scale(self) -> tuple[float, float]:
        """(lowest finite loss, its distance to the highest): the range losses are normalized by."""
        firsts = [v[0][0] for v in self.by_loss.values() if v[0][0] < math.inf]
        lo = min(firsts, default=0.0)
        lasts = []
        for v in self.by_loss.values():
            i = bisect.bisect_left(v, (math.inf, -1)) - 1
            if i >= 0:
                lasts.append(v[i][0])
        hi = max(lasts, default=1.0)
        return lo, max(hi - lo, 1e-12)

    def best_at(self, level: float) -> float:
        """The lowest finite loss at ``level``; at any level when none there is finite."""
        at = self.by_loss.get(level)
        if at and at[0][0] < math.inf:
            return at[0][0]
        firsts = [v[0][0] for v in self.by_loss.values() if v[0][0] < math.inf]
        return min(firsts, default=0.0)

    def select(self, cap: int) -> list[tuple[int, float]]:
        """At most ``cap`` rows' keys, in key order: all of them when they are no more; else an
        even share for each level (a level with fewer rows leaves its spare share to the others),
        each level's share half its best rows and half its newest trials' (the highest ids)."""
        if len(self.rows) <= cap:
            return sorted(self.rows)
        levels = sorted(self.by_trial, key=lambda lv: (len(self.by_trial[lv]), lv))
        left = cap
        chosen: set[tuple[int, float]] = set()
        for i, level in enumerate(levels):
            quota = min(len(self.by_trial[level]), left // (len(levels) - i))
            left -= quota
            best = quota - quota // 2
            chosen.update((tid, level) for _, tid in self.by_loss[level][:best])
            need = quota - best
            for tid in reversed(self.by_trial[level]):
                if need == 0:
                    break
                if (tid, level) not in chosen:
                    chosen.add((tid, level))
                    need -= 1
        return sorted(chosen)


class DyHPOScheduler:
    """See the module's docstring."""

    def __init__(
        self,
        space: SearchSpace,
        levels: Sequence[float],
        max_resource: float,
        eta: float,
        *,
        probability_sh: float = 0.25,
        seed: int = 0,
        maximize: bool = False,
        min_points: int = 5,
        options: Mapping[str, Any] | None = None,
        objective: Objective | None = None,
    ) -> None:
        opts = dict(options or {})
        # Several objectives: the model learns the curves of a ParEGO scalarization, drawn anew
        # for each fit; ``_scal`` is the installed model's, and the rows are under it.
        self.multi = objective if objective is not None and objective.is_multi else None
        self._scal: _Scalarization | None = None
        self.space = space
        self.asha = RungScheduler(levels, max_resource, eta, promotion=True)
        self.rungs = self.asha.rungs_of(0)  # the levels, then max_resource
        self.max_resource = float(max_resource)
        self.probability_sh = probability_sh
        self.seed = seed
        self.maximize = maximize
        self.min_points = max(2, min_points)
        self.n_candidates = int(opts.get("candidates", N_CANDIDATES))
        default_local = N_LOCAL if space.dim > LOCAL_ABOVE_DIM else 0
        self.n_local = int(opts.get("local_candidates", default_local))
        self.fit_iterations = int(opts.get("fit_iterations", 300))
        self.local_flip = float(opts.get("local_flip", LOCAL_FLIP))
        # Bounds that keep a fit's and a decision's cost from growing with the study (see
        # _Rows.select and _paused): rows a fit trains on, rows a decision conditions on, paused
        # trials scored per rung.
        self.max_rows = int(opts.get("max_rows", MAX_ROWS))
        self.condition_rows = int(opts.get("condition_rows", CONDITION_ROWS))
        self.paused_per_rung = int(opts.get("paused_candidates", PAUSED_PER_RUNG))
        # Off by default: the widened variances (2.4-9.6x) made the acquisition explore where
        # the model was right and lost regret on curves-crossing and hartmann6 (docs/models.md,
        # "Calibrated variances").
        self.calibrate = bool(opts.get("calibrate", False))
        self.model: Surrogate | None = None
        self._store = _Rows()
        # The study handed over by attach, and the trials touched since the rows were updated;
        # another study view is walked whole at each update, as before there was an index.
        self._attached: StudyView | None = None
        self._full = True
        self._dirty: set[int] = set()
        # A paused trial: (its next rung, its encoded configuration, raw_curve below the rung).
        self._paused_raw: dict[int, tuple[float, Array, Array]] = {}
        # Each trial's max_resource in thousandths, and their sum: what a decision's draws are
        # seeded with (kept from the touched trials, not summed over every trial each time).
        self._launched: dict[int, int] = {}
        self._launched_total = 0
        self._asked = 0  # training rows in the last request
        self._installed = 0  # models installed so far: the posterior cache's key
        self._conditioned: tuple[tuple[int, int, float, float], Surrogate] | None = None
        self._seen: dict[tuple[Any, ...], int] = {}  # config_key: the first trial with it
        self._seen_upto = 0  # trials looked at for _seen
        self.choice_explore = float(opts.get("choice_explore", CHOICE_EXPLORE))
        # Each choice's one-hot block (offset, values) and how many trials have each value.
        self._choice_blocks: list[tuple[int, int]] = []
        at = 0
        for p in space.params:
            if p.type is ParamType.CHOICE and p.encoded_len > 1:
                self._choice_blocks.append((at, p.encoded_len))
            at += p.encoded_len
        self._value_counts = [np.zeros(n, dtype=np.int64) for _, n in self._choice_blocks]

    # -- reports ----------------------------------------------------------------------------------

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        # The study pauses a trial at its launch's max_resource (a rung): nothing to add.
        return Decision.CONTINUE

    # -- fits -------------------------------------------------------------------------------------

    # -- the index (hpod.core.plans.IndexedScheduler) ----------------------------------------

    def attach(self, study: StudyView) -> None:
        self.asha.attach(study)
        self._attached = study
        self._full = True
        self._dirty.clear()
        self._paused_raw.clear()
        self._launched = {t.trial_id: _milli(t.max_resource) for t in study.trials}
        self._launched_total = sum(self._launched.values())
        self._seen_configs(study)

    def touched(self, trial: TrialView, since: float | None = None) -> None:
        self.asha.touched(trial, since)
        self._dirty.add(trial.trial_id)
        self._paused_raw.pop(trial.trial_id, None)
        milli = _milli(trial.max_resource)
        self._launched_total += milli - self._launched.get(trial.trial_id, 0)
        self._launched[trial.trial_id] = milli

    def forget(self, trial_id: int, resource: float) -> None:
        # A row at a level holds the curve up to that level: those at or above the retracted
        # point are stale; the posterior conditioned on them too.
        for level in [lv for lv in self._store.by_trial if lv >= resource]:
            if (trial_id, level) in self._store:
                self._store.remove((trial_id, level))
        self._paused_raw.pop(trial_id, None)
        self._conditioned = None

    def _update(self, study: StudyView) -> _Rows:
        """The rows, with those of every trial touched since the last update added."""
        if self._attached is study and not self._full:
            trials: Sequence[TrialView] = [study.trials[i] for i in sorted(self._dirty)]
        else:
            trials = study.trials
            self._full = self._attached is not study
        self._dirty.clear()
        for t in trials:
            self._add_rows(study, t, self._scal, self._store)
        return self._store

    def _training_rows(
        self,
        study: StudyView,
        scal: _Scalarization | None = None,
        rows: _Rows | None = None,
    ) -> list[_Row]:
        """Every row, in key order: the scheduler's own, or those of ``study`` under ``scal``
        added to ``rows``."""
        if rows is None:
            store = self._update(study)
        else:
            store = rows
            for t in study.trials:
                self._add_rows(study, t, scal, store)
        return [store.rows[k] for k in sorted(store.rows)]

    def _add_rows(
        self, study: StudyView, t: TrialView, scal: _Scalarization | None, rows: _Rows
    ) -> None:
        # A trial's curve below a rung it reached never changes again (reports past a pause are
        # not counted; a report taken back drops its rows, see forget), so each (trial, rung) row
        # is built once (under one scalarization, with several objectives).
        if not t.curve:
            return
        top = t.last_resource
        series: Mapping[float, float] | None = None
        for level in self.rungs:
            if level > top:
                break
            key = (t.trial_id, level)
            if key in rows:
                continue
            if series is None:
                series = self._series(t, scal)
            upto = [v for r, v in series.items() if r <= level]
            if not upto:
                continue
            if self.multi is not None and scal is not None:
                vectors = [v for r, v in t.vectors.items() if r <= level]
                loss = scal(self.multi.minimized(self.multi.summary_vector(vectors)))
            else:
                value = study.objective.summary(upto)
                loss = -value if self.maximize else value
            below = {r: v for r, v in series.items() if r < level}
            rows.add(
                key,
                _Row(
                    self.space.encode(_config_of(t)),
                    level,
                    below,
                    loss,
                    self._raw(below, level),
                ),
            )

    def _series(self, t: TrialView, scal: _Scalarization | None) -> Mapping[float, float]:
        """The curve the model learns: the objective's, or the scalarized metrics (a loss)."""
        if self.multi is None or scal is None:
            return t.curve
        minimized = self.multi.minimized
        return {r: scal(minimized(v)) for r, v in t.vectors.items()}

    def _draw(self, study: StudyView, n: int) -> _Scalarization:
        """A new scalarization: weights uniform on the simplex from (seed, rows), each metric's
        range over the values seen so far."""
        assert self.multi is not None
        k = len(self.multi.metrics)
        rng = np.random.default_rng([self.seed, 0x9A5E, n])
        weights = tuple(float(w) for w in rng.dirichlet(np.ones(k)))
        seen = [self.multi.minimized(v) for t in study.trials for v in t.vectors.values()]
        lo = tuple(min((v[i] for v in seen if math.isfinite(v[i])), default=0.0) for i in range(k))
        hi = tuple(max((v[i] for v in seen if math.isfinite(v[i])), default=1.0) for i in range(k))
        return _Scalarization(weights, lo, hi)

    def _scale(self, rows: Sequence[_Row]) -> tuple[float, float]:
        finite = [r.loss for r in rows if math.isfinite(r.loss)]
        lo = min(finite, default=0.0)
        hi = max(finite, default=1.0)
        return lo, max(hi - lo, 1e-12)

    def _raw(self, curve: Mapping[float, float], below: float) -> Array:
        # A scalarized curve is a loss already.
        maximize = self.maximize and self.multi is None
        return raw_curve(curve, below, self.max_resource, maximize)

    def wants_fit(self, study: StudyView) -> FitRequest | None:
        scal: _Scalarization | None = None
        if self.multi is not None and self._scal is None:
            # No model yet: the rows are counted under a first draw (they are as many).
            self._scal = self._draw(study, 0)
        store = self._update(study)
        n = len(store)
        if n < self.min_points or not refit_due(n, self._asked):
            return None
        self._asked = n
        if self.multi is not None:
            scal = self._draw(study, n)
            store = _Rows()
            self._training_rows(study, scal, store)
        # At most max_rows of them (_Rows.select): a fit's cost stays bounded as the study grows;
        # normalized by the range of all.
        rows = [store.rows[k] for k in store.select(self.max_rows)]
        x, budget, curve, y = self._inputs(rows, *store.scale())
        return FitRequest(
            "hpod.fit.dyhpo_torch:fit_deep_kernel",
            owner=Owner.SCHEDULER,
            key=("dyhpo", n),
            seed=self.seed,
            data={
                "x": x,
                "budget": budget,
                "curve": curve,
                "y": y,
                "iterations": self.fit_iterations,
                "scalarization": scal,
                "calibrate": self.calibrate,
            },
        )

    def _inputs(
        self, rows: Sequence[_Row], lo: float, span: float
    ) -> tuple[Array, Array, Array, Array]:
        """The rows as the model takes them: encoded configurations, budgets, curves, and losses
        normalized by the study's range (a non-finite one as the worst, 1)."""
        return (
            np.stack([r.x for r in rows]),
            np.array([self._budget(r.level) for r in rows]),
            normalize_curves(np.stack([r.raw for r in rows]), lo, span),
            np.array([(r.loss - lo) / span if math.isfinite(r.loss) else 1.0 for r in rows]),
        )

    def install(self, request: FitRequest, model: Any) -> None:
        self.model = model
        self._installed += 1
        scal = request.data.get("scalarization")
        if scal is not None and scal != self._scal:
            # The model learnt this scalarization: decide under it, rows rebuilt to match.
            self._scal = scal
            self._store = _Rows()
            self._full = True
            self._paused_raw.clear()
            self._conditioned = None

    def _budget(self, level: float) -> float:
        """A rung as the network sees it: on a log scale from the first rung (0) to max_resource
        (1), so geometric rungs are evenly spaced; linearly, rungs 1, 3 and 9 of 81 would all sit
        within 0.1 of each other and the network could hardly tell them apart."""
        lo, hi = self.rungs[0], self.max_resource
        if hi <= lo or lo <= 0:
            return level / hi if hi > 0 else 0.0
        return math.log(max(level, lo) / lo) / math.log(hi / lo)

    def _curve(self, curve: Mapping[float, float], below: float, lo: float, span: float) -> Array:
        # A scalarized curve is a loss already.
        maximize = self.maximize and self.multi is None
        return curve_input(curve, below, self.max_resource, lo, span, maximize)

    # -- free slots ------------------------------------------------------------------------------

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        if self.model is None or not can_start_new:
            return self.asha.next(study, can_start_new=can_start_new)
        if self._attached is study:
            launched = self._launched_total
        else:
            launched = sum(_milli(t.max_resource) for t in study.trials)
        rng = np.random.default_rng([self.seed, len(study.trials), launched])
        if rng.random() < self.probability_sh:
            plan = self.asha.next(study, can_start_new=False)
            if plan is not None:
                return plan
        return self.score(study, rng)

    def _next_rung(self, level: float) -> float | None:
        return next((r for r in self.rungs if r > level + 1e-9), None)

    def score(self, study: StudyView, rng: np.random.Generator) -> Plan:
        """The plan with the largest expected improvement: a paused trial at its next rung or a
        new configuration at the first rung."""
        assert self.model is not None
        store = self._update(study)
        lo, span = store.scale()
        model = self._posterior(self.model, store, lo, span)
        paused = self._paused(study)
        first = self.rungs[0]
        cands = self.space.balanced_choices(self.space.sample_encoded(rng, self.n_candidates), rng)
        if self.n_local > 0:
            cands = np.concatenate([cands, self._local_moves(store, rng)])
        m = len(paused) + len(cands)
        x = np.empty((m, self.space.dim))
        budget = np.empty(m)
        curve = np.zeros((m, 2, CURVE_LEN))
        if paused:
            kept = [self._paused_inputs(t, nxt) for t, nxt in paused]
            x[: len(paused)] = np.stack([k[1] for k in kept])
            budget[: len(paused)] = [self._budget(nxt) for _, nxt in paused]
            curve[: len(paused)] = normalize_curves(np.stack([k[2] for k in kept]), lo, span)
        x[len(paused) :] = cands
        budget[len(paused) :] = self._budget(first)
        mu, var = model.predict(x, budget, curve)
        best_at = {level: store.best_at(level) for level in {first, *(n for _, n in paused)}}
        best = np.array([best_at[nxt] for _, nxt in paused] + [best_at[first]] * len(cands))
        # The best seen, in the model's units: normalized by the study's range, then standardized.
        # (The lowest posterior mean at the level instead, as Syne Tune does, was measured too:
        # better on curves-noisy, worse on the other four; docs/models.md.)
        best_std = ((best - lo) / span - model.y_mean) / model.y_std
        # In log space: a confident model puts every EI deep in the Gaussian tail, where the
        # plain formula is 0 for all and argmax would pick the first paused trial.
        ei = log_expected_improvement(mu, var, best_std)
        # Each distinct candidate once (a finite space's 256 draws are a few configurations).
        _, unique = np.unique(cands, axis=0, return_index=True)
        seen = self._seen_configs(study)
        considered = np.concatenate([np.arange(len(paused)), len(paused) + unique])
        order = considered[np.argsort(-ei[considered], kind="stable")]
        plan = self._pick(study, order, paused, cands, seen, first)
        if (
            isinstance(plan, NewTrial)
            and plan.config is not None
            and self._choice_blocks
            and rng.random() < self.choice_explore
        ):
            # Keep every value of a choice alive: this start is the best candidate that has, for
            # each choice, the value the fewest trials have. A model sure of a spurious effect of
            # a choice would otherwise start nearly all its trials on one value; a start costs a
            # first rung, and whether it goes further is the model's call as ever.
            keep = np.ones(len(cands), dtype=bool)
            for (at, _), counts in zip(self._choice_blocks, self._value_counts, strict=True):
                least = np.flatnonzero(counts == counts.min())
                keep &= cands[:, at + int(least[rng.integers(len(least))])] == 1.0
            held = order[order >= len(paused)]
            held = held[keep[held - len(paused)]]
            alive = self._pick(study, held, paused, cands, seen, first, resume=False)
            if alive is not None:
                return alive
        if plan is not None:
            return plan
        # Every candidate was run already: the searcher draws one that was not, or says the
        # space is exhausted (the study then only promotes).
        return NewTrial(max_resource=first)

    def _pick(
        self,
        study: StudyView,
        order: Array,
        paused: Sequence[tuple[TrialView, float]],
        cands: Array,
        seen: Mapping[tuple[Any, ...], int],
        first: float,
        *,
        resume: bool = True,
    ) -> Plan | None:
        """The first plan in ``order`` (indices: paused trials, then candidates) that is not a
        configuration a trial already has; with ``resume``, such a candidate resumes that trial
        instead when it is paused below max_resource (otherwise it is dropped)."""
        for i in order:
            if i < len(paused):
                t, nxt = paused[i]
                return Promote(t.trial_id, max_resource=nxt, how="model")
            config = self.space.decode(cands[i - len(paused)])
            owner = seen.get(config_key(config))
            if owner is None:
                return NewTrial(max_resource=first, config=config, how="model")
            if not resume:
                continue
            t = study.trials[owner]
            nxt = self._next_rung(t.max_resource)
            if t.state is TrialState.PAUSED and nxt is not None:
                return Promote(t.trial_id, max_resource=nxt, how="model")
        return None

    def _seen_configs(self, study: StudyView) -> Mapping[tuple[Any, ...], int]:
        """Each configuration a trial has, to the first trial with it. Trials are only ever
        appended, and their configurations never change: each is looked at once."""
        trials = study.trials
        for k in range(self._seen_upto, len(trials)):
            t = trials[k]
            config = _config_of(t)
            self._seen.setdefault(config_key(config), t.trial_id)
            if self._choice_blocks:
                x = self.space.encode(config)
                for (at, n), counts in zip(self._choice_blocks, self._value_counts, strict=True):
                    counts[int(np.argmax(x[at : at + n]))] += 1
        self._seen_upto = len(trials)
        return self._seen

    def _paused(self, study: StudyView) -> list[tuple[TrialView, float]]:
        """The paused trials to score, each with its next rung: from the rung index, each rung's
        best ``paused_per_rung`` by their value there (the others, the model would hardly pick
        first: the cost of a decision stays bounded), in trial order; without one, all."""
        index = self.asha._index_for(study)
        if index is None:
            out: list[tuple[TrialView, float]] = []
            for t in study.trials:
                if t.state is TrialState.PAUSED:
                    nxt = self._next_rung(t.max_resource)
                    if nxt is not None:
                        out.append((t, nxt))
            return out
        trials = study.trials
        picked = [
            (trials[tid], self.rungs[k + 1])
            for k in range(len(self.rungs) - 1)
            for _, tid in index.promotable[0][k].keys[: self.paused_per_rung]
        ]
        return sorted(picked, key=lambda p: p[0].trial_id)

    def _paused_inputs(self, t: TrialView, nxt: float) -> tuple[float, Array, Array]:
        """A paused trial's encoded configuration and curve below its next rung (raw_curve),
        kept until the trial is touched."""
        kept = self._paused_raw.get(t.trial_id)
        if kept is not None and kept[0] == nxt:
            return kept
        fresh = (nxt, self.space.encode(_config_of(t)), self._raw(self._series(t, self._scal), nxt))
        self._paused_raw[t.trial_id] = fresh
        return fresh

    def _local_moves(self, store: _Rows, rng: np.random.Generator) -> Array:
        """Candidates near the best five configurations at the highest rung that has three."""
        levels = sorted(store.by_trial, reverse=True)
        top = next((lv for lv in levels if len(store.by_trial[lv]) >= 3), levels[-1])
        at = [tid for loss, tid in store.by_loss[top][:5] if loss < math.inf]
        best = np.stack([store.rows[(tid, top)].x for tid in at] or [store.rows[min(store.rows)].x])
        return self.space.neighbours(best, self.n_local, LOCAL_SD, rng, flip=self.local_flip)

    def _posterior(self, model: Surrogate, store: _Rows, lo: float, span: float) -> Surrogate:
        """The installed model conditioned on the rows seen so far, not only those of its fit:
        a refit waits for 10 % more rows, a posterior costs one Cholesky factor, so each decision
        knows the latest rung results. At most ``condition_rows`` of them (_Rows.select: each
        level's best and newest), so that factor's cost stays bounded as the study grows."""
        key = (self._installed, store.version, lo, span)
        if self._conditioned is not None and self._conditioned[0] == key:
            return self._conditioned[1]
        rows = [store.rows[k] for k in store.select(self.condition_rows)]
        posterior = model.condition(*self._inputs(rows, lo, span))
        self._conditioned = (key, posterior)
        return posterior


def _milli(resource: float) -> int:
    return round(resource * 1000)


def _config_of(t: TrialView) -> Mapping[str, Any]:
    return t.config
