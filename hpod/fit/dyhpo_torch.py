"""DyHPO's deep-kernel GP, trained in torch: imported only by the process that runs a DyHPO fit.

The network is :func:`hpod.core.dyhpo.features` written in torch: an MLP over (configuration,
budget), a 1-D convolution over the learning curve's (value, mask) channels with a global max pool,
a linear layer over both into the GP's feature space; an RBF kernel there, with a constant mean and
Gaussian noise. Everything is trained jointly on the exact marginal likelihood with Adam, from
scratch each time with the request's seed, in float64 on one thread, so the same request gives the
same weights. The result is handed back as numpy arrays (:class:`~hpod.core.dyhpo.DeepKernel`):
scoring never needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from hpod.core.dyhpo import DeepKernel
from hpod.core.gp import Array
from hpod.core.models import FitRequest

HIDDEN = 32
CHANNELS = 4
WIDTH = 3
FEATURES = 16
LEARNING_RATE = 0.02
# Calibration, where the request asks for it ([scheduler.options] calibrate; off by default): a
# fifth of the rows (HOLD_OUT) are kept out of training, from MIN_ROWS_TO_CALIBRATE rows on; the
# mean squared standardized error there, shrunk to 1 by PRIOR_ROWS, clipped, scales every
# predicted variance.
HOLD_OUT = 5
MIN_ROWS_TO_CALIBRATE = 10
PRIOR_ROWS = 3.0
SCALE_RANGE = (0.25, 1e4)


def fit_deep_kernel(
    request: FitRequest, between_steps: Callable[[], None] | None = None
) -> DeepKernel:
    """Train on every row and hand back the network conditioned on them. With ``calibrate`` in
    the request: train on all rows but a held-out fifth (drawn from the seed), measure on those
    how far off the model's standard deviations are, and scale its variances by that
    (:attr:`DeepKernel.var_scale`)."""
    data = request.data
    x = np.asarray(data["x"], dtype=np.float64)
    budget = np.asarray(data["budget"], dtype=np.float64)
    curve = np.asarray(data["curve"], dtype=np.float64)
    y_raw = np.asarray(data["y"], dtype=np.float64)
    n = len(y_raw)
    calibrate = bool(data.get("calibrate", False))
    held = n // HOLD_OUT if calibrate and n >= MIN_ROWS_TO_CALIBRATE else 0
    order = np.random.default_rng([int(request.seed), n, 0xCA1]).permutation(n)
    train, test = np.sort(order[held:]), np.sort(order[:held])
    fitted = _train(request, x[train], budget[train], curve[train], y_raw[train], between_steps)
    scale = 1.0
    if held:
        mu, var = fitted.predict(x[test], budget[test], curve[test])
        ys = (y_raw[test] - fitted.y_mean) / fitted.y_std
        z2 = (ys - mu) ** 2 / (var + fitted.noise)
        # Shrunk towards 1 (calibrated) by PRIOR_ROWS pseudo-rows: a few held-out rows say little.
        scale = float((z2.sum() + PRIOR_ROWS) / (held + PRIOR_ROWS))
        scale = min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])
    return replace(fitted.condition(x, budget, curve, y_raw), var_scale=scale)


def _train(
    request: FitRequest,
    x_np: Array,
    budget_np: Array,
    curve_np: Array,
    y_np: Array,
    between_steps: Callable[[], None] | None,
) -> DeepKernel:
    import torch

    # One thread: deterministic, and a fit never takes more than the one core it was given.
    torch.set_num_threads(1)
    data = request.data
    x = torch.as_tensor(x_np)
    budget = torch.as_tensor(budget_np)
    curve = torch.as_tensor(curve_np)
    y_mean = float(y_np.mean())
    y_std = float(y_np.std()) or 1.0
    y = torch.as_tensor((y_np - y_mean) / y_std)
    n, d = x.shape
    gen = torch.Generator().manual_seed(int(request.seed))

    def layer(fan_in: int, shape: tuple[int, ...]) -> Any:
        # PyTorch's default initialization, drawn from our generator.
        bound = 1.0 / math.sqrt(fan_in)
        t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        return t.requires_grad_(True)

    w = {
        "w1": layer(d + 1, (HIDDEN, d + 1)),
        "b1": layer(d + 1, (HIDDEN,)),
        "w2": layer(HIDDEN, (HIDDEN, HIDDEN)),
        "b2": layer(HIDDEN, (HIDDEN,)),
        "wc": layer(2 * WIDTH, (CHANNELS, 2, WIDTH)),
        "bc": layer(2 * WIDTH, (CHANNELS,)),
        "w3": layer(HIDDEN + CHANNELS, (FEATURES, HIDDEN + CHANNELS)),
        "b3": layer(HIDDEN + CHANNELS, (FEATURES,)),
    }
    # GP hyperparameters, as raw values under softplus.
    gp = {
        "lengthscale": torch.tensor(1.0, dtype=torch.float64, requires_grad=True),
        "signal": torch.tensor(0.5, dtype=torch.float64, requires_grad=True),
        "noise": torch.tensor(-3.0, dtype=torch.float64, requires_grad=True),
        "mean": torch.tensor(0.0, dtype=torch.float64, requires_grad=True),
    }
    opt = torch.optim.Adam([*w.values(), *gp.values()], lr=LEARNING_RATE)
    eye = torch.eye(n, dtype=torch.float64)
    sp = torch.nn.functional.softplus

    def net(x_: Any, b_: Any, c_: Any) -> Any:
        u = torch.cat([x_, b_[:, None]], dim=1)
        h = torch.relu(u @ w["w1"].T + w["b1"])
        h = torch.relu(h @ w["w2"].T + w["b2"])
        conv = torch.nn.functional.conv1d(c_, w["wc"], w["bc"])
        pooled = torch.relu(conv).amax(dim=2)
        return torch.cat([h, pooled], dim=1) @ w["w3"].T + w["b3"]

    for _ in range(int(data.get("iterations", 300))):
        if between_steps is not None:
            between_steps()
        opt.zero_grad()
        z = net(x, budget, curve)
        t_ls, t_sig = sp(gp["lengthscale"]), sp(gp["signal"])
        t_noise = sp(gp["noise"]) + 1e-6
        d2 = torch.cdist(z, z).pow(2)
        k = t_sig * torch.exp(-0.5 * d2 / t_ls**2) + (t_noise + 1e-6) * eye
        try:
            chol = torch.linalg.cholesky(k)
        except RuntimeError:
            break  # keep the last good weights
        r = (y - gp["mean"])[:, None]
        alpha = torch.cholesky_solve(r, chol)
        nll = 0.5 * (r * alpha).sum() + torch.log(torch.diagonal(chol)).sum()
        loss = nll / n
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    weights = {k_: v.detach().numpy().copy() for k_, v in w.items()}
    ls = float(sp(gp["lengthscale"]).detach())
    sig = float(sp(gp["signal"]).detach())
    noise = float(sp(gp["noise"]).detach()) + 1e-6
    mean = float(gp["mean"].detach())
    return _finish(weights, ls, sig, noise, mean, y_mean, y_std, (x_np, budget_np, curve_np, y_np))


def _finish(
    weights: dict[str, Any],
    ls: float,
    sig: float,
    noise: float,
    mean: float,
    y_mean: float,
    y_std: float,
    data: tuple[Array, Array, Array, Array],
) -> DeepKernel:
    """The GP's factors, computed with the numpy network that scoring will use: the fitted
    weights conditioned on their own training set."""
    none = np.zeros((0, 0))
    unfactored = DeepKernel(
        **weights,
        lengthscale=ls,
        signal=sig,
        noise=noise,
        mean=mean,
        y_mean=y_mean,
        y_std=y_std,
        train_z=none,
        chol=none,
        alpha=np.zeros(0),
    )
    return unfactored.condition(*data)
