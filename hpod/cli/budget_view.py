"""How hpodctl words a study's time budget: in ``preview`` before anything runs (what it derived
and what it will measure) and in ``show`` as it is revised (docs/time-budget.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _s(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}s"
    return "-" if value is None else str(value)


def preview_lines(tb: Mapping[str, Any], unit: str) -> list[str]:
    """``hpodctl preview``'s lines for a spec with ``[limits] time_ratio``."""
    lines = [
        f"time budget {tb['time_ratio']:g} x one full training of {tb['full_resource']} "
        f"{unit}(s), subset ratio {tb['subset_ratio']}",
    ]
    if tb.get("derived"):
        lines.append("derived     " + ", ".join(tb["derived"]))
    lines.append(f"measures    {tb['measures']}")
    lines.append(f"then        {tb['then']}")
    return lines


def show_lines(b: Mapping[str, Any], unit: str) -> list[str]:
    """``hpodctl show``'s lines: the latest estimate and what it rests on."""
    head = (
        f"time budget: {b['time_ratio']:g} x one full training of {b['full_resource']} "
        f"{unit}(s) (subset ratio {b['subset_ratio']:g}, {b['concurrency']} at once), "
        f"revised {b['revisions']} time(s)"
    )
    lines = [head]
    if b.get("budget") is None:
        lines.append(f"  {b.get('note')}")
        return lines
    est = b.get("estimate") or {}
    measured = b.get("measured") or {}
    lines.append(
        f"  estimate: start-up {_s(est.get('startup'))}, {_s(est.get('per_unit'))} per {unit}, "
        f"end {_s(est.get('teardown'))} (from {measured.get('runs')} run(s), "
        f"{measured.get('units')} {unit}(s))"
    )
    lines.append(
        f"  full training {_s(b.get('full_training'))}; budget {_s(b.get('budget'))} "
        f"(elapsed {_s(b.get('elapsed'))}); max_trials {_s(b.get('max_trials'))}"
    )
    return lines
