"""A Gaussian process on the unit cube: Matérn 5/2 with one length scale per dimension (ARD).

The hyperparameters (length scales, signal variance, noise variance) are fitted by maximum
likelihood: L-BFGS-B on the log marginal likelihood with its analytic gradient, from a fixed start
and a few starts drawn from ``seed``, so the same data and seed give the same model bit for bit
(a study restored from the store refits exactly the model it had). The targets are standardized
before the fit and the predictions are returned in the original units.

Pure numpy and scipy: this is what the BO searcher fits in a worker and evaluates on the event
loop, and it must not pull torch in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

Array = np.ndarray[Any, np.dtype[np.float64]]

_SQRT5 = math.sqrt(5.0)
# Bounds on the log hyperparameters. Length scales beyond 20 unit-cube widths make a dimension
# irrelevant already; below 0.01 the model only interpolates noise.
_LOG_LS = (math.log(1e-2), math.log(20.0))
_LOG_SIGNAL = (math.log(1e-2), math.log(1e2))
_LOG_NOISE = (math.log(1e-6), math.log(1.0))
_JITTER = 1e-8


@dataclass(frozen=True)
class GPParams:
    lengthscales: Array  # (d,)
    signal: float  # variance, standardized units
    noise: float  # variance, standardized units

    def pack(self) -> Array:
        return np.concatenate(
            [np.log(self.lengthscales), [math.log(self.signal), math.log(self.noise)]]
        )

    @classmethod
    def unpack(cls, theta: Array) -> GPParams:
        d = theta.shape[0] - 2
        return cls(np.exp(theta[:d]), float(np.exp(theta[d])), float(np.exp(theta[d + 1])))


def matern52(a: Array, b: Array, lengthscales: Array, signal: float) -> Array:
    """k(a_i, b_j) for every pair: signal * (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r)."""
    sa = a / lengthscales
    sb = b / lengthscales
    d2 = (sa * sa).sum(1)[:, None] + (sb * sb).sum(1)[None, :] - 2.0 * sa @ sb.T
    r = np.sqrt(np.maximum(d2, 0.0))
    out: Array = signal * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * np.exp(-_SQRT5 * r)
    return out


def neg_log_likelihood(theta: Array, x: Array, y: Array) -> tuple[float, Array]:
    """The negative log marginal likelihood of standardized ``y`` and its gradient in ``theta``
    (log length scales, log signal, log noise)."""
    n, d = x.shape
    p = GPParams.unpack(theta)
    diff2 = (x[:, None, :] - x[None, :, :]) ** 2  # (n, n, d)
    scaled = diff2 / (p.lengthscales**2)
    r = np.sqrt(scaled.sum(-1))
    e = np.exp(-_SQRT5 * r)
    kern = p.signal * (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * e
    k = kern + (p.noise + _JITTER) * np.eye(n)
    try:
        chol = linalg.cholesky(k, lower=True)
    except linalg.LinAlgError:
        return 1e25, np.zeros_like(theta)
    alpha = linalg.cho_solve((chol, True), y)
    nll = (
        0.5 * float(y @ alpha)
        + float(np.log(np.diag(chol)).sum())
        + 0.5 * n * math.log(2 * math.pi)
    )
    kinv = linalg.cho_solve((chol, True), np.eye(n))
    w = np.outer(alpha, alpha) - kinv  # dNLL/dtheta = -0.5 tr(w dK/dtheta)
    # dk/dlog(l_i) = signal * 5/3 (1 + sqrt5 r) exp(-sqrt5 r) * (x_i - x'_i)^2 / l_i^2
    common = p.signal * (5.0 / 3.0) * (1.0 + _SQRT5 * r) * e
    grad = np.empty_like(theta)
    grad[:d] = -0.5 * np.einsum("ij,ij,ijk->k", w, common, scaled)
    grad[d] = -0.5 * float((w * kern).sum())
    grad[d + 1] = -0.5 * p.noise * float(np.trace(w))
    return nll, grad


@dataclass(frozen=True)
class GP:
    """A fitted GP: its data, hyperparameters and the factors that prediction needs."""

    x: Array
    y: Array  # standardized
    params: GPParams
    y_mean: float
    y_std: float
    chol: Array
    alpha: Array
    nll: float

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def best_y(self) -> float:
        """The smallest training target, in the original units."""
        return self.y_mean + self.y_std * float(self.y.min())

    def predict(self, xs: Array) -> tuple[Array, Array]:
        """Mean and variance (of the latent function, without the noise) at ``xs``, in the
        original units of ``y``."""
        ks = matern52(xs, self.x, self.params.lengthscales, self.params.signal)
        mu = ks @ self.alpha
        v = linalg.solve_triangular(self.chol, ks.T, lower=True)
        var = np.maximum(self.params.signal - (v * v).sum(0), 1e-12)
        return self.y_mean + self.y_std * mu, var * self.y_std**2


def fit_gp(x: Array, y: Array, *, seed: int = 0, restarts: int = 2) -> GP:
    """Fit by maximum likelihood: the fixed start plus ``restarts`` starts drawn from ``seed``;
    the best optimum wins. Deterministic for (x, y, seed)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x {x.shape} and y {y.shape} do not match")
    n, d = x.shape
    y_mean = float(y.mean())
    y_std = float(y.std())
    if not math.isfinite(y_std) or y_std < 1e-12:
        y_std = 1.0
    ys = (y - y_mean) / y_std
    bounds = [_LOG_LS] * d + [_LOG_SIGNAL, _LOG_NOISE]
    starts = [np.concatenate([np.full(d, math.log(0.5)), [0.0, math.log(1e-2)]])]
    rng = np.random.default_rng([seed, n, d])
    for _ in range(restarts):
        starts.append(
            np.concatenate(
                [
                    rng.uniform(math.log(0.05), math.log(2.0), d),
                    [rng.uniform(-1.0, 1.0), rng.uniform(math.log(1e-4), math.log(0.1))],
                ]
            )
        )
    # Here, not at the top: the daemon only evaluates fitted models (the fits run in the worker
    # process), and scipy.optimize is 17 MB of its memory (bench/scale.py, bo).
    from scipy import optimize

    best: tuple[float, Array] | None = None
    for theta0 in starts:
        res = optimize.minimize(
            neg_log_likelihood,
            theta0,
            args=(x, ys),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 200},
        )
        value = float(res.fun)
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, np.asarray(res.x, dtype=np.float64))
    theta = starts[0] if best is None else best[1]
    params = GPParams.unpack(theta)
    k = matern52(x, x, params.lengthscales, params.signal) + (params.noise + _JITTER) * np.eye(n)
    chol = robust_cholesky(k)
    alpha = linalg.cho_solve((chol, True), ys)
    return GP(x, ys, params, y_mean, y_std, chol, alpha, math.inf if best is None else best[0])


def robust_cholesky(k: Array) -> Array:
    jitter = 0.0
    for _ in range(8):
        try:
            out: Array = linalg.cholesky(k + jitter * np.eye(k.shape[0]), lower=True)
            return out
        except linalg.LinAlgError:
            jitter = max(jitter * 10.0, 1e-8)
    raise linalg.LinAlgError("the kernel matrix is not positive definite")


def log_expected_improvement(mu: Array, var: Array, best: float | Array) -> Array:
    """log EI for minimization, accurate far into the tail.

    EI = sd * h(z) with z = (best - mu) / sd and h(z) = pdf(z) + z cdf(z). Computed directly,
    h underflows to 0 once z < -38 (and loses its digits well before, as two nearly equal terms
    cancel), so a confident model that expects no candidate to beat the incumbent scores them all
    0 and argmax picks the first. Here h(z) = pdf(z) (1 + z cdf(z) / pdf(z)), with the ratio
    cdf / pdf = sqrt(pi / 2) erfcx(-z / sqrt 2) exact in floating point, and its asymptotic
    series 1 / z^2 - 3 / z^4 + 15 / z^6 where even that cancels (Ament et al., NeurIPS 2023).
    """
    from scipy.special import erfcx, ndtr

    sd = np.sqrt(np.maximum(var, 1e-18))
    z = np.asarray((best - mu) / sd, dtype=np.float64)
    log_pdf = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
    # Three regimes: direct where nothing cancels (z >= -1; erfcx(-z) would overflow for large
    # z), the erfcx form in the tail, and the asymptotic series past z = -1000.
    near = z >= -1.0
    far = z < -1e3
    zn = np.where(near, z, 0.0)
    direct = np.log(np.exp(-0.5 * zn * zn) / math.sqrt(2 * math.pi) + zn * ndtr(zn))
    zt = np.where(near | far, -2.0, z)
    inner = 1.0 + zt * math.sqrt(math.pi / 2) * erfcx(-zt / math.sqrt(2))
    tail = log_pdf + np.log(np.maximum(inner, 1e-300))
    inv2 = 1.0 / np.where(far, z * z, 1.0)
    series = log_pdf + np.log(inv2 * (1.0 - 3.0 * inv2 + 15.0 * inv2 * inv2))
    out: Array = np.log(sd) + np.where(near, direct, np.where(far, series, tail))
    return out


def expected_improvement(mu: Array, var: Array, best: float | Array) -> Array:
    """EI for minimization: E[max(best - f, 0)] under N(mu, var); ``best`` one for all or one
    per point."""
    from scipy.special import ndtr

    sd = np.sqrt(np.maximum(var, 1e-18))
    z = (best - mu) / sd
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    out: Array = (best - mu) * ndtr(z) + sd * pdf
    return np.maximum(out, 0.0)
