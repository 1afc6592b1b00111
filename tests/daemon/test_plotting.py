"""Which trials a report's images draw: every one, or past the cap the best and a share."""

from __future__ import annotations

from hpod.daemon.plotting import PLOT_BEST_TRIALS, drawn_trials


def _report(values: dict[int, float], mode: str = "min") -> dict[str, object]:
    rows = [{"trial": t, "objective": v} for t, v in values.items()]
    return {"objective": {"metric": "loss", "mode": mode}, "per_trial": rows}


def test_every_trial_is_drawn_under_the_cap() -> None:
    counts = dict.fromkeys(range(100), 27)
    assert drawn_trials(_report({t: float(t) for t in counts}), counts, cap=2700) is None


def test_past_the_cap_the_best_trials_and_a_spread_of_the_rest_fit_in_it() -> None:
    # 10,000 trials of 27 reports; the best are the highest ids (a min objective of -id).
    counts = dict.fromkeys(range(10_000), 27)
    report = _report({t: -float(t) for t in counts})
    drawn = drawn_trials(report, counts, cap=20_000)
    assert drawn is not None
    assert sum(counts[t] for t in drawn) <= 20_000
    assert sum(counts[t] for t in drawn) > 15_000
    best = set(range(10_000 - PLOT_BEST_TRIALS, 10_000))
    assert best <= set(drawn)
    rest = [t for t in drawn if t not in best]
    # Spread over the ids, not the first ones.
    assert rest[0] < 100
    assert rest[-1] > 9_000
    # A max objective ranks the other way.
    drawn_max = drawn_trials(_report({t: -float(t) for t in counts}, "max"), counts, cap=20_000)
    assert drawn_max is not None
    assert set(range(PLOT_BEST_TRIALS)) <= set(drawn_max)
