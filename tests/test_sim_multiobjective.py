"""The two-objective benchmarks and the simulator's hypervolume: known fronts, exact accounting."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from hpod.benchmarks_mo import MULTI, Front, Hypervolume
from hpod.core.pareto import hypervolume_2d
from hpod.core.plans import Suggestion
from hpod.core.spec import StudySpec
from hpod.sim import main, simulate

ASHA = {"type": "asha", "min_resource": 1, "reduction_factor": 3}


def spec_for(name: str, scheduler: dict[str, object]) -> StudySpec:
    return StudySpec.from_mapping(MULTI[name].spec_mapping(scheduler), base_dir=Path("/tmp"))


def front_configs(name: str, n: int) -> list[dict[str, float]]:
    """Configurations on the true front, spread along it."""
    if name == "zdt1-curves":
        return [{"x0": i / n, "x1": 0.0, "x2": 0.0, "x3": 0.0} for i in range(n + 1)]
    return [{"x": 0.7, "y": 0.3, "z": 0.5, "w": i / n} for i in range(n + 1)]


@pytest.mark.parametrize("name", sorted(MULTI))
def test_the_true_front_has_the_stated_hypervolume(name: str) -> None:
    b = MULTI[name]
    front = [b.true_values(c) for c in front_configs(name, 20000)]
    assert hypervolume_2d(front, b.reference) == pytest.approx(b.front_hypervolume, abs=2e-4)
    # No configuration beats the front: random ones add nothing to its hypervolume.
    rng = random.Random(1)
    others = [b.true_values({k: rng.random() for k in b.space}) for _ in range(2000)]
    assert hypervolume_2d(front + others, b.reference) == pytest.approx(
        hypervolume_2d(front, b.reference), abs=1e-12
    )


@pytest.mark.parametrize("name", sorted(MULTI))
def test_the_fidelity_terms_vanish_at_max_resource(name: str) -> None:
    b = MULTI[name]
    rng = random.Random(2)
    names = [n for n, _ in b.metrics]
    for _ in range(50):
        c = {k: rng.random() for k in b.space}
        top, seconds = b.step(c, b.max_resource, 0)
        assert tuple(top[n] for n in names) == pytest.approx(b.true_values(c))
        assert seconds > 0
        low, _ = b.step(c, 1, 0)
        # A low level is never better than the end on any metric (the curves only improve).
        assert all(low[n] >= top[n] - 1e-12 for n in names)


def test_front_keeps_the_non_dominated_points_and_their_hypervolume() -> None:
    hv = Hypervolume((("a", "min"), ("b", "max")), (1.0, 0.0))
    assert hv.point({"a": 0.5, "b": 0.25}) == (0.5, -0.25)
    a, b = hv.point({"a": 0.5})
    assert a == 0.5
    assert math.isnan(b)
    rng = random.Random(3)
    front = Front(Hypervolume((("a", "min"), ("b", "min")), (1.0, 1.0)))
    seen: list[tuple[float, float]] = []
    for i in range(300):
        p = (round(rng.random(), 2), round(rng.random(), 2))
        before = front.hypervolume()
        changed = front.add(p, {"i": i})
        seen.append(p)
        assert front.hypervolume() == pytest.approx(hypervolume_2d(seen, (1.0, 1.0)))
        if not changed:
            assert front.hypervolume() == before
    points = [q for q, _ in front.points]
    assert not front.add(points[0], {"i": -1})  # an equal point changes nothing
    assert not front.add((float("nan"), 0.0), {"i": -2})
    for q in points:
        assert not any(o != q and o[0] <= q[0] and o[1] <= q[1] for o in points)


@pytest.mark.parametrize("name", sorted(MULTI))
def test_simulated_hypervolume_is_that_of_every_counted_report(name: str) -> None:
    b = MULTI[name]
    rng = random.Random(4)
    configs: list[dict[str, float | int | str]] = [
        {k: rng.random() for k in b.space} for _ in range(2000)
    ]

    class Fixed:
        needs_history = True

        def suggest(self, number: int, history: object) -> Suggestion:
            return Suggestion(configs[number])

    kw: dict[str, Any] = {"workers": 3, "budget": 500, "hypervolume": Hypervolume.of(b)}
    res = simulate(spec_for(name, ASHA), b.step, seed=5, searcher=Fixed(), **kw)
    again = simulate(spec_for(name, ASHA), b.step, seed=5, searcher=Fixed(), **kw)
    assert res == again
    assert res.trace == again.trace
    names = [n for n, _ in b.metrics]
    reports = [e for e in res.trace if e[1] == "report"]
    assert len(reports) == res.epochs_used == 500
    measured = []
    for _, _, tid, level, _ in reports:
        metrics, _ = b.step(configs[tid], level, 5)
        measured.append(tuple(metrics[n] for n in names))
    assert res.hypervolume is not None
    assert res.hypervolume == pytest.approx(hypervolume_2d(measured, b.reference))
    assert res.hv_history[-1][1] == pytest.approx(res.hypervolume)
    assert [h[0] for h in res.hv_history] == sorted(h[0] for h in res.hv_history)
    assert res.true_hypervolume is not None
    assert 0 < res.hypervolume <= b.front_hypervolume
    assert 0 < res.true_hypervolume <= b.front_hypervolume + 1e-12
    assert res.best_config is None
    assert res.history == ()


@pytest.mark.parametrize("name", sorted(MULTI))
def test_pareto_asha_beats_random_search_on_hypervolume(name: str) -> None:
    b = MULTI[name]
    kw: dict[str, Any] = {"workers": 4, "budget": 486, "hypervolume": Hypervolume.of(b)}
    fifo = [simulate(spec_for(name, {"type": "fifo"}), b.step, seed=s, **kw) for s in range(2)]
    asha = [simulate(spec_for(name, ASHA), b.step, seed=s, **kw) for s in range(2)]
    assert sum(r.hypervolume or 0 for r in asha) > sum(r.hypervolume or 0 for r in fifo)


def test_cli_prints_the_hypervolume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'name = "mo"\ncommand = ["true"]\n'
        '[objective]\nresource = "epoch"\n'
        '[[objective.metrics]]\nname = "f1"\nmode = "min"\n'
        '[[objective.metrics]]\nname = "f2"\nmode = "min"\n'
        "[space]\n"
        + "".join(f'x{i} = {{ param_type = "uniform", range = [0.0, 1.0] }}\n' for i in range(4))
        + '[scheduler]\ntype = "asha"\nmax_resource = 81\nmin_resource = 1\n'
    )
    argv = [str(spec), "--benchmark", "zdt1-curves", "--budget", "200", "--seeds", "0-1"]
    assert main([*argv, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in rows] == [0, 1]
    assert all(0 < r["hypervolume"] <= MULTI["zdt1-curves"].front_hypervolume for r in rows)
    assert main(argv) == 0
    assert "hypervolume=" in capsys.readouterr().out
