"""A study's plots as PNG images: what ``hpodctl plot`` writes, and the daemon beside report.json.

Pure over three things a client or the daemon already has: the objective report
(``hpod.daemon.reports.build_report``, the ``report`` method's answer), the learning curves'
points (the ``curves`` method's, ``Client.curve_points``) and the rungs (``show --json``'s
``rungs``). :func:`render` gives each image's file name and bytes; nothing here touches a file.

Four images, as ClearML and Optuna's dashboard draw them:

- ``objective.png``: every report's objective value over the study's time, and the best so far;
- ``curves.png``: each trial's learning curve, coloured by its rank (best darkest), the rung
  levels marked;
- ``parallel.png``: parallel coordinates of the configurations, one axis per parameter and one
  for the objective, each line coloured by its trial's value;
- ``rungs.png``: how many trials reached each rung.

matplotlib is the ``plot`` extra (``pip install 'hpod[plot]'``), imported only when drawing: the
daemon never imports this module, it runs ``python -m hpod.plots`` (the report's data on stdin,
the images as JSON on stdout) off its event loop, and writes the files itself.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hpod import wire

__all__ = ["NAMES", "available", "render"]

NAMES = ("objective.png", "curves.png", "parallel.png", "rungs.png")


def available() -> bool:
    """Whether matplotlib can be imported (looked up, not imported)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _maximize(report: Mapping[str, Any]) -> bool:
    objective = report.get("objective") or {}
    mode = objective.get("mode")
    if mode is None and objective.get("metrics"):
        mode = objective["metrics"][0].get("mode")
    return str(mode).startswith("max")


def _metric(report: Mapping[str, Any]) -> str:
    objective = report.get("objective") or {}
    if objective.get("metric"):
        return str(objective["metric"])
    metrics = objective.get("metrics") or [{}]
    return str(metrics[0].get("name", "objective"))


def _ranks(report: Mapping[str, Any]) -> dict[int, int]:
    """Each trial's rank (0: the best) among those with an objective value."""
    maximize = _maximize(report)
    rows = [
        (r["trial"], v)
        for r in report.get("per_trial") or []
        if (v := _num(r.get("objective"))) is not None
    ]
    rows.sort(key=lambda tv: (-tv[1] if maximize else tv[1], tv[0]))
    return {tid: i for i, (tid, _) in enumerate(rows)}


def _say(ax: Any, text: str) -> None:
    """A plot with nothing to draw says why, in its middle."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def render(
    report: Mapping[str, Any],
    points: Sequence[Mapping[str, Any]],
    rungs: Sequence[Mapping[str, Any]] = (),
) -> dict[str, bytes]:
    """The four PNG images by file name (:data:`NAMES`)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    name = report.get("name") or report.get("study") or "study"
    metric = _metric(report)
    resource = str((report.get("objective") or {}).get("resource") or "resource")
    maximize = _maximize(report)
    ranks = _ranks(report)
    # viridis without its palest yellow, which a white background swallows.
    cmap = matplotlib.colors.ListedColormap(
        matplotlib.colormaps["viridis"]([i / 255 * 0.85 for i in range(256)])
    )
    out: dict[str, bytes] = {}

    def png(fig: Figure) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def colour(trial: int) -> Any:
        if trial not in ranks or len(ranks) < 2:
            return cmap(0.0) if trial in ranks else "0.7"
        return cmap(ranks[trial] / (len(ranks) - 1))

    # -- objective over time, with the best so far
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    start = _num(report.get("created")) or min(
        (_num(p.get("at")) or 0.0 for p in points), default=0.0
    )
    timed = sorted(
        (at - start, v)
        for p in points
        if (at := _num(p.get("at"))) is not None and (v := _num(p.get("value"))) is not None
    )
    if timed:
        xs = [t for t, _ in timed]
        ax.scatter(xs, [v for _, v in timed], s=10, alpha=0.5, label=f"{metric} (each report)")
        best: list[float] = []
        for _, v in timed:
            best.append(v if not best else (max if maximize else min)(best[-1], v))
        ax.step(xs, best, where="post", color="C3", linewidth=2, label="best so far")
        ax.legend(loc="best")
    else:
        _say(ax, "no reports yet")
    ax.set_xlabel("seconds since the study started")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: {metric} over time ({'max' if maximize else 'min'})")
    ax.grid(alpha=0.3)
    out["objective.png"] = png(fig)

    # -- learning curves by trial, coloured by rank, rungs marked
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    by_trial: dict[int, list[tuple[float, float]]] = {}
    for p in points:
        r, v = _num(p.get("resource")), _num(p.get("value"))
        if r is not None and v is not None:
            by_trial.setdefault(int(p["trial"]), []).append((r, v))
    # The worst first, so the best are drawn on top.
    for trial in sorted(by_trial, key=lambda t: -ranks.get(t, len(ranks))):
        curve = sorted(by_trial[trial])
        ax.plot(
            [r for r, _ in curve],
            [v for _, v in curve],
            color=colour(trial),
            linewidth=2.0 if ranks.get(trial) == 0 else 1.0,
            alpha=0.9,
            marker="." if len(curve) < 30 else None,
            label=f"trial {trial} (best)" if ranks.get(trial) == 0 else None,
        )
    levels = sorted({lv for r in rungs if (lv := _num(r.get("level"))) is not None})
    for i, level in enumerate(levels):
        ax.axvline(
            level,
            color="0.5",
            linestyle="--",
            linewidth=0.8,
            label="rung levels" if i == 0 else None,
        )
    if not by_trial:
        _say(ax, "no reports yet")
    else:
        ax.legend(loc="best")
    if ranks:
        sm = matplotlib.cm.ScalarMappable(
            cmap=cmap, norm=matplotlib.colors.Normalize(1, max(len(ranks), 2))
        )
        fig.colorbar(sm, ax=ax, label="rank (1: best)")
    ax.set_xlabel(resource)
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: learning curves ({len(by_trial)} trials)")
    ax.grid(alpha=0.3)
    out["curves.png"] = png(fig)

    # -- parallel coordinates of the configurations
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in report.get("per_trial") or [] if isinstance(r.get("config"), Mapping)]
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r["config"] if k not in keys)
    axes = [*keys, metric]
    columns: list[list[float | None]] = []
    ticks: list[tuple[list[float], list[str]]] = []
    for key in axes:
        raw = [
            r.get("objective") if key == metric and key not in keys else r["config"].get(key)
            for r in rows
        ]
        nums = [_num(v) for v in raw]
        if all(n is not None or v is None for n, v in zip(nums, raw, strict=True)):
            lo = min((n for n in nums if n is not None), default=0.0)
            hi = max((n for n in nums if n is not None), default=1.0)
            span = hi - lo or 1.0
            positive = lo > 0 and hi / lo > 100
            if positive:  # a log-scaled parameter (a learning rate) reads better in log
                lo_l, hi_l = math.log10(lo), math.log10(hi)
                span = hi_l - lo_l or 1.0
                columns.append([None if n is None else (math.log10(n) - lo_l) / span for n in nums])
                ticks.append(([0.0, 1.0], [f"{lo:.3g}", f"{hi:.3g}"]))
            else:
                columns.append([None if n is None else (n - lo) / span for n in nums])
                ticks.append(([0.0, 1.0], [f"{lo:.3g}", f"{hi:.3g}"]))
        else:
            cats = sorted({str(v) for v in raw if v is not None})
            where = {c: i / max(len(cats) - 1, 1) for i, c in enumerate(cats)}
            columns.append([None if v is None else where[str(v)] for v in raw])
            ticks.append(([where[c] for c in cats], cats))
    for i, r in enumerate(rows):
        ys = [y for col in columns if (y := col[i]) is not None]
        if len(ys) < len(columns):
            continue
        ax.plot(range(len(axes)), ys, color=colour(int(r["trial"])), alpha=0.7, linewidth=1.0)
    for x, (where_, labels) in enumerate(ticks):
        ax.axvline(x, color="0.3", linewidth=0.8)
        for y, label in zip(where_, labels, strict=True):
            ax.text(x + 0.02, y, label, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), axes)
    ax.set_yticks([])
    ax.set_xlim(-0.1, max(len(axes) - 1, 1) + 0.3)
    ax.set_title(f"{name}: configurations (colour: rank, best darkest)")
    out["parallel.png"] = png(fig)

    # -- trials per rung
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    brackets = sorted({int(r.get("bracket") or 0) for r in rungs})
    width = 0.8 / max(len(brackets), 1)
    for j, b in enumerate(brackets):
        mine = [r for r in rungs if int(r.get("bracket") or 0) == b]
        xs_ = [i + j * width for i in range(len(mine))]
        ax.bar(xs_, [int(r.get("reached") or 0) for r in mine], width=width, label=f"bracket {b}")
        for x_, rung in zip(xs_, mine, strict=True):
            n = int(rung.get("reached") or 0)
            ax.text(x_, n, str(n), ha="center", va="bottom", fontsize=8)
    if rungs:
        first = [r for r in rungs if int(r.get("bracket") or 0) == brackets[0]]
        ax.set_xticks(range(len(first)), [f"{_num(r.get('level')) or 0:g}" for r in first])
        if len(brackets) > 1:
            ax.legend(loc="best")
    else:
        _say(ax, "no rungs (fifo)")
    ax.set_xlabel(f"rung level ({resource})")
    ax.set_ylabel("trials that reached it")
    ax.set_title(f"{name}: trials per rung")
    ax.grid(alpha=0.3, axis="y")
    out["rungs.png"] = png(fig)
    return out


def main() -> int:
    """``python -m hpod.plots``: ``{"report", "points", "rungs"}`` (wire-tagged JSON) on stdin,
    ``{name: base64 PNG}`` on stdout. What the daemon runs, as a process of its own, niced."""
    with contextlib.suppress(OSError):
        os.nice(10)
    data = wire.loads_json(sys.stdin.buffer.read().decode("utf-8"))
    images = render(data["report"], data.get("points") or [], data.get("rungs") or [])
    json.dump({k: base64.b64encode(v).decode("ascii") for k, v in images.items()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
