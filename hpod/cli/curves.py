"""``hpodctl curves``, ``hpodctl plot`` and ``hpodctl export``: a study's learning curves, its
plots as PNG files (:mod:`hpod.plots`, the ``plot`` extra) and every trial, config and metric as
CSV or JSON. Registered by :func:`register` from ``hpod.cli.hpodctl``; each reads the daemon
through :class:`hpod.client.Client` only (docs/watching.md)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hpod import wire
from hpod.client import Client

__all__ = ["export_rows", "register"]

Command = Callable[[argparse.Namespace], int]
# hpod.cli.hpodctl.AddCommand's shape (not imported: hpodctl imports this module).
Add = Callable[[str, Command, str, str], argparse.ArgumentParser]


def register(add: Add) -> None:
    """Add the commands through hpodctl's ``add(name, func, help, example)`` (its AddCommand)."""
    p = add(
        "curves",
        _cmd_curves,
        "a study's learning curves: each report's objective value, trial by trial",
        "hpodctl curves digits-asha-1\nhpodctl curves digits-asha-1 --trial 3 --json",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("--trial", type=int, default=None, metavar="N", help="one trial's curve only")
    p = add(
        "plot",
        _cmd_plot,
        "write a study's plots as PNG files (objective over time, learning curves, parallel "
        "coordinates, trials per rung); needs the plot extra (matplotlib)",
        "hpodctl plot digits-asha-1 --out plots/",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the PNGs")
    p = add(
        "export",
        _cmd_export,
        "every trial, config and metric of a study, as CSV (one row per report) or JSON",
        "hpodctl export digits-asha-1 --format csv --out digits.csv",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="default: stdout")


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "socket", None))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _cmd_curves(args: argparse.Namespace) -> int:
    with _client(args) as client:
        points = client.curve_points(args.study, args.trial)
        meta = client.curves(args.study, args.trial, limit=1)
    if args.json:
        out = {k: meta.get(k) for k in ("metric", "mode", "resource")}
        out["points"] = points
        print(json.dumps(wire.tag(out), indent=2, allow_nan=False))
        return 0
    if not points:
        print("no reports yet")
        return 0
    by_trial: dict[int, list[Mapping[str, Any]]] = {}
    for p in points:
        by_trial.setdefault(int(p["trial"]), []).append(p)
    metric, resource = meta.get("metric"), meta.get("resource")
    for i, (trial, curve) in enumerate(sorted(by_trial.items())):
        if i:
            print()
        print(f"trial {trial}: {metric} by {resource}")
        rows = [[_fmt(p.get("resource")), _fmt(p.get("value")), _fmt(p.get("run"))] for p in curve]
        header = [str(resource).upper(), str(metric).upper(), "RUN"]
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(3)]
        for row in [header, *rows]:
            print("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    return 0


def _study_data(client: Client, study: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return client.report(study), client.curve_points(study)


def _cmd_plot(args: argparse.Namespace) -> int:
    from hpod import plots

    if not plots.available():
        print(
            "hpodctl: plot needs matplotlib: pip install 'hpod[plot]'",
            file=sys.stderr,
        )
        return 2
    with _client(args) as client:
        report, points = _study_data(client, args.study)
        rungs = client.study(args.study).get("rungs") or []
    images = plots.render(report, points, rungs)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        path = args.out / name
        path.write_bytes(data)
        print(path)
    return 0


def export_rows(
    report: Mapping[str, Any], points: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[list[Any]]]:
    """The CSV export: one row per report (a trial that never reported: one row with no
    metrics), its trial's state and config, and every metric any report carried."""
    trials: list[Mapping[str, Any]] = report.get("per_trial") or []
    config_keys: list[str] = []
    for t in trials:
        config_keys.extend(k for k in t.get("config") or {} if k not in config_keys)
    metric_keys: list[str] = []
    for p in points:
        metric_keys.extend(k for k in p.get("metrics") or {} if k not in metric_keys)
    head = ["trial", "state", "objective", "report", "run", "resource", "at"]
    header = [*head, *(f"config.{k}" for k in config_keys), *(f"metric.{k}" for k in metric_keys)]
    by_trial: dict[int, list[Mapping[str, Any]]] = {}
    for p in points:
        by_trial.setdefault(int(p["trial"]), []).append(p)
    rows: list[list[Any]] = []
    for t in trials:
        cfg = t.get("config") or {}
        start = [t.get("trial"), t.get("state"), t.get("objective")]
        config = [cfg.get(k) for k in config_keys]
        for p in by_trial.get(int(t["trial"]), []) or [{}]:
            metrics = p.get("metrics") or {}
            rows.append(
                [
                    *start,
                    p.get("id"),
                    p.get("run"),
                    p.get("resource"),
                    p.get("at"),
                    *config,
                    *(metrics.get(k) for k in metric_keys),
                ]
            )
    return header, rows


def _export_json(report: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_trial: dict[int, list[dict[str, Any]]] = {}
    for p in points:
        by_trial.setdefault(int(p["trial"]), []).append(
            {k: p.get(k) for k in ("id", "run", "resource", "at", "metrics")}
        )
    trials = [
        {**{k: v for k, v in t.items()}, "reports": by_trial.get(int(t["trial"]), [])}
        for t in report.get("per_trial") or []
    ]
    keys = ("study", "name", "state", "end_reason", "created", "ended", "objective", "best")
    return {**{k: report.get(k) for k in keys}, "trials": trials}


def _cmd_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report, points = _study_data(client, args.study)
    out = sys.stdout if args.out is None else args.out.open("w", newline="")
    try:
        if args.format == "json":
            json.dump(wire.tag(_export_json(report, points)), out, indent=2, allow_nan=False)
            out.write("\n")
        else:
            header, rows = export_rows(report, points)
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows([["" if v is None else v for v in row] for row in rows])
    finally:
        if out is not sys.stdout:
            out.close()
    return 0
