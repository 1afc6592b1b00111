"""The answer rule: which estimate of a trial ``Study.best()`` ranks by, chosen and then confirmed.

A study answers with the trial whose estimate is best (``hpod.core.answer``): for a plain min/max
objective, the mean of its last W counted reports (all of them when it has fewer). W = 1 is the
last report, the rule before issue 19. This script chooses W and checks the choice on seeds that
did not choose it (docs/answer.md has the table and the date):

1. Choosing: every hpod method of ``bench/quality.py`` (fifo, ASHA promotion, ASHA stopping,
   Hyperband, BO + ASHA, DyHPO) on the five built-in benchmarks, seeds 0-4 (``--choose-seeds``),
   and every candidate W (1, 3, 5, 7, 9). A candidate's score is the mean of its mean relative
   change in mean regret against W = 1 over the (method, benchmark) cells at 50 % and at 100 % of
   the budget (an answer read halfway counts as much as the last one); the lowest score wins
   (ties: the smaller W).
2. Held out: the chosen W against W = 1 on seeds 5-14 (``--held-out-seeds``), every method: the
   mean regret at 50 % and 100 % of the budget, the relative change, and a paired Wilcoxon
   signed-rank p over the (benchmark, seed) pairs (two-sided; a pair with the same answer has no
   difference and is left out, as Wilcoxon's own rule does; each benchmark's regrets are divided
   by its mean W = 1 regret first, so no benchmark's scale outweighs the others').

Every run is one simulation (``hpod.sim.simulate``, the budget, workers and rung levels of
``bench/quality.py``, hpod's own samplers): the trials and their reports do not depend on the
answer rule, so each W is evaluated on the same runs (a paired comparison) from the trials'
curves as they stood at each fraction of the budget, with ``hpod.core.answer.best_of``, the rule
``Study.best()`` follows (a check: at 100 % the W of ``hpod.core.answer.WINDOW`` names what the
simulator's ``Study.best()`` named).

Runs are kept in ``--cache`` (JSON lines, the regret of every W from 1 to 9 at each fraction,
keyed by method, benchmark, seed and a hash of the code that makes them), so a second invocation
only prints. DyHPO takes minutes a run on a loaded 2-core machine (the others seconds):
``--methods`` and the seed options make a shorter run, and the output says what it covered.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from quality import DEFAULT, ETA, HPOD_METHODS, HPOD_SEARCHERS, WORKERS  # noqa: E402
from runcache import append_cache, read_cache  # noqa: E402

from hpod.benchmarks import BUILTIN  # noqa: E402
from hpod.benchmarks_suite import ALL  # noqa: E402
from hpod.core import answer  # noqa: E402
from hpod.core.objective import Objective, ObjectiveMode  # noqa: E402
from hpod.core.spec import StudySpec  # noqa: E402
from hpod.core.study import Study  # noqa: E402
from hpod.sim import parse_seeds, simulate  # noqa: E402

# The named methods ("hpod default" is one of them under another name).
METHODS = [m for m in HPOD_METHODS if m != DEFAULT]
CANDIDATES = (1, 3, 5, 7, 9)
KEPT = range(1, 10)  # every W the cache keeps, so the candidates can change without a rerun
FRACTIONS = (0.25, 0.5, 1.0)
SHOWN = (0.5, 1.0)
CACHE = HERE / "results" / "answer-rule-runs.jsonl"
RUN_VERSION = 1  # part of the cache's key: bump it with any change here that changes a run


def fingerprint(method: str) -> str:
    """What a run's result depends on: hpod's core, the simulator, the benchmarks, the method."""
    h = hashlib.sha256()
    root = HERE.parent / "hpod"
    for path in sorted([*root.joinpath("core").glob("*.py"), *root.joinpath("fit").glob("*.py")]):
        h.update(path.read_bytes())
    for name in ("sim.py", "benchmarks.py", "benchmarks_suite.py"):
        h.update((root / name).read_bytes())
    extra = [RUN_VERSION, method, HPOD_METHODS[method], HPOD_SEARCHERS.get(method), WORKERS, ETA]
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _snapshots(
    at: Sequence[int], into: dict[int, dict[int, dict[float, float]]], studies: list[Study]
) -> Iterator[None]:
    """Keeps every trial's curve as it stands after the report numbered in ``at`` (the
    simulator trains one resource unit a report, so report n is n units of the budget), and
    the study in ``studies``."""
    on_report = Study.on_report
    count = 0
    wanted = set(at)

    def counted(self: Study, *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        out = on_report(self, *args, **kwargs)
        count += 1
        if not studies:
            studies.append(self)
        if count in wanted:
            into[count] = {t.trial_id: dict(t.curve) for t in self.trials if t.curve}
        return out

    Study.on_report = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        Study.on_report = on_report  # type: ignore[method-assign]


def run(name: str, method: str, seed: int) -> dict[str, Any]:
    """One simulation; the regret of every kept W at every fraction of the budget."""
    bench = ALL[name]
    assert bench.true_value is not None
    assert bench.optimum is not None
    raw = bench.spec_mapping(HPOD_METHODS[method])
    if method in HPOD_SEARCHERS:
        raw["searcher"] = dict(HPOD_SEARCHERS[method])
    spec = StudySpec.from_mapping(raw, base_dir=Path("."))
    budget = 20.0 * bench.max_resource
    marks = [round(f * budget) for f in FRACTIONS]
    snaps: dict[int, dict[int, dict[float, float]]] = {}
    started = time.perf_counter()
    studies: list[Study] = []
    with _snapshots(marks, snaps, studies):
        res = simulate(
            spec,
            bench.step,
            workers=WORKERS,
            budget=budget,
            seed=seed,
            true_value=bench.true_value,
            optimum=bench.optimum,
        )
    seconds = time.perf_counter() - started
    configs = {t.trial_id: dict(t.config) for t in studies[0].trials} if studies else {}
    if studies and marks[-1] not in snaps:
        # It ended before the budget did: what it had at its end stands for the later marks.
        snaps[marks[-1]] = {t.trial_id: dict(t.curve) for t in studies[0].trials if t.curve}
    objective = Objective(bench.metric, ObjectiveMode(bench.mode))
    final = snaps.get(marks[-1])
    regrets: dict[str, dict[str, float | None]] = {}
    for w in KEPT:
        cells: dict[str, float | None] = {}
        for f, mark in zip(FRACTIONS, marks, strict=True):
            # A study that ended before the mark answers with what it had at its end.
            curves = snaps.get(mark, final) or {}
            tid = answer.best_of(objective, curves, w)
            cells[str(f)] = None if tid is None else bench.true_value(configs[tid]) - bench.optimum
        regrets[str(w)] = cells
    mine = regrets[str(answer.WINDOW)]["1.0"]
    if final is not None and res.regret is not None and mine is not None:
        # The offline rule is Study.best()'s: same window, same answer.
        assert math.isclose(mine, res.regret, abs_tol=1e-12), (name, method, seed, mine, res)
    return {
        "benchmark": name,
        "method": method,
        "seed": seed,
        "regrets": regrets,
        "trials": res.trials,
        "seconds": round(seconds, 2),
    }


def _job(args: tuple[str, str, int, str]) -> dict[str, Any]:
    name, method, seed, fp = args
    row = run(name, method, seed)
    row["fingerprint"] = fp
    return row


Rows = dict[tuple[str, str, int], dict[str, Any]]


def _regret(row: Mapping[str, Any], w: int, f: float) -> float | None:
    value = row["regrets"][str(w)][str(f)]
    return None if value is None else float(value)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _change(new: float, old: float) -> float:
    return (new - old) / old if old > 0 else (0.0 if new == old else math.inf)


def choose(
    rows: Rows, methods: Sequence[str], benchmarks: Sequence[str], seeds: Sequence[int]
) -> tuple[int, list[str]]:
    """The candidate W with the lowest score, the mean of its mean relative changes against W = 1
    over the (method, benchmark) cells at 50 % and at 100 % of the budget, and the table that
    shows it."""
    lines = [
        "| W | mean change vs last, 50 % | mean change vs last, 100 % | score "
        "| cells worse / better at 100 % |",
        "|---|---|---|---|---|",
    ]
    scores: dict[int, float] = {}
    for w in CANDIDATES:
        per: dict[float, list[float]] = {f: [] for f in SHOWN}
        worse = better = 0
        for method in methods:
            for name in benchmarks:
                cell = [rows[(method, name, s)] for s in seeds if (method, name, s) in rows]
                for f in SHOWN:
                    pairs = [
                        (a, b)
                        for r in cell
                        if (a := _regret(r, w, f)) is not None
                        and (b := _regret(r, 1, f)) is not None
                    ]
                    if not pairs:
                        continue
                    change = _change(_mean([a for a, _ in pairs]), _mean([b for _, b in pairs]))
                    if math.isfinite(change):
                        per[f].append(change)
                    if f == 1.0:
                        worse += change > 1e-12
                        better += change < -1e-12
        scores[w] = _mean([_mean(per[f]) for f in SHOWN])
        lines.append(
            f"| {w}{' (last)' if w == 1 else ''} | {_pct(_mean(per[0.5]))} | "
            f"{_pct(_mean(per[1.0]))} | {_pct(scores[w])} | {worse} / {better} |"
        )
    chosen = min(CANDIDATES, key=lambda w: (scores[w], w))
    return chosen, lines


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x * 100:+.1f} %"


def _wilcoxon(diffs: Sequence[float]) -> float:
    from scipy.stats import wilcoxon

    nonzero = [d for d in diffs if abs(d) > 1e-15]
    if not nonzero:
        return 1.0
    return float(wilcoxon(nonzero).pvalue)


def confirm(
    rows: Rows,
    chosen: int,
    methods: Sequence[str],
    benchmarks: Sequence[str],
    seeds: Sequence[int],
) -> list[str]:
    """The chosen W against the last report on the held-out seeds, a row per method."""
    head = "| method | seeds | " + " | ".join(
        f"{int(f * 100)} %: last | W={chosen} | change | p" for f in SHOWN
    )
    lines = [head + " |", "|---|---|" + "---|---|---|---|" * len(SHOWN)]
    for method in methods:
        cells: list[str] = []
        covered = sorted({s for (m, _, s) in rows if m == method and s in seeds})
        runs = sum(1 for (m, n, s) in rows if m == method and s in seeds and n in benchmarks)
        for f in SHOWN:
            old: list[float] = []
            new: list[float] = []
            diffs: list[float] = []
            for name in benchmarks:
                pairs = [
                    (a, b)
                    for s in seeds
                    if (method, name, s) in rows
                    and (a := _regret(rows[(method, name, s)], chosen, f)) is not None
                    and (b := _regret(rows[(method, name, s)], 1, f)) is not None
                ]
                if not pairs:
                    continue
                scale = _mean([b for _, b in pairs]) or 1.0
                new.extend(a for a, _ in pairs)
                old.extend(b for _, b in pairs)
                diffs.extend((a - b) / scale for a, b in pairs)
            change = _change(_mean(new), _mean(old))
            cells.append(
                f"{_mean(old):.4f} | {_mean(new):.4f} | {_pct(change)} | {_wilcoxon(diffs):.3g}"
            )
        shown = f"{_seeds_text(covered)} ({runs} runs)"
        lines.append(f"| {method} | {shown} | " + " | ".join(cells) + " |")
    return lines


def per_benchmark(
    rows: Rows, chosen: int, methods: Sequence[str], benchmarks: Sequence[str], seeds: Sequence[int]
) -> list[str]:
    """Held out, at 100 % of the budget: mean regret last -> W, per benchmark and method."""
    lines = ["| method | " + " | ".join(benchmarks) + " |", "|---|" + "---|" * len(benchmarks)]
    for method in methods:
        cells = []
        for name in benchmarks:
            cell = [rows[(method, name, s)] for s in seeds if (method, name, s) in rows]
            old = [v for r in cell if (v := _regret(r, 1, 1.0)) is not None]
            new = [v for r in cell if (v := _regret(r, chosen, 1.0)) is not None]
            cells.append(
                "-"
                if not old
                else f"{_mean(old):.4f} → {_mean(new):.4f} "
                f"({_pct(_change(_mean(new), _mean(old)))}"
                + (f", {len(old)} seeds)" if len(old) < len(seeds) else ")")
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--choose-seeds", default="0-4", help="seeds that choose W (default 0-4)")
    p.add_argument("--held-out-seeds", default="5-14", help="seeds that check it (default 5-14)")
    p.add_argument(
        "--benchmarks",
        nargs="*",
        default=sorted(BUILTIN),
        choices=sorted(ALL),
        help="default: the five built-ins (hpod.benchmarks); the suite's (hpod.benchmarks_suite) "
        "were not used to choose W",
    )
    p.add_argument("--methods", nargs="*", default=METHODS, choices=list(HPOD_METHODS))
    p.add_argument(
        "--choose-methods",
        nargs="*",
        choices=list(HPOD_METHODS),
        help="the methods that choose W (default: --methods)",
    )
    p.add_argument("--window", type=int, help="check this W, choose none")
    p.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    p.add_argument("--cache", type=Path, default=CACHE, help="JSON lines of runs kept")
    p.add_argument("--refresh", action="store_true", help="run again even what the cache has")
    p.add_argument(
        "--any-code",
        action="store_true",
        help="take a cached run whatever code made it (the latest one of each run)",
    )
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="run nothing: the tables over the runs the cache has (each row says its seeds)",
    )
    args = p.parse_args(argv)
    choose_seeds = parse_seeds(args.choose_seeds)
    held_out = parse_seeds(args.held_out_seeds)
    choose_methods = args.choose_methods or args.methods
    fps = {m: fingerprint(m) for m in HPOD_METHODS}
    cache = {} if args.refresh else read_cache(args.cache)
    if args.any_code:
        cache = {(m, n, s, fps[m]): row for (m, n, s, _), row in cache.items()}
    wanted = {
        (m, name, s)
        for name in args.benchmarks
        for m, seeds in ((m, choose_seeds) for m in choose_methods)
        for s in seeds
        if args.window is None
    } | {(m, name, s) for name in args.benchmarks for m in args.methods for s in held_out}
    rows: Rows = {}
    todo = []
    for m, name, s in sorted(wanted):
        row = cache.get((m, name, s, fps[m]))
        if row is not None:
            rows[(m, name, s)] = row
        else:
            todo.append((name, m, s, fps[m]))
    if args.cached_only:
        print(f"{len(todo)} runs not in {args.cache}: left out", file=sys.stderr)
        todo = []
    # The slow ones first, so the two processes end together.
    todo.sort(key=lambda j: (j[1] != "hpod DyHPO", j[1] != "hpod BO + ASHA", j))
    started = time.perf_counter()
    print(f"{len(rows)} runs from {args.cache}, {len(todo)} to run", file=sys.stderr, flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_job, todo):
            append_cache(args.cache, row)
            rows[(row["method"], row["benchmark"], row["seed"])] = row
            print(
                f"{row['method']} {row['benchmark']} seed {row['seed']}: {row['seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    print(
        f"answer rule: the mean of a trial's last W counted reports (W = 1: the last report); "
        f"benchmarks {', '.join(args.benchmarks)}; budget 20 x max_resource; {WORKERS} workers; "
        f"eta {ETA}; hpod's own samplers; {elapsed:.0f} s running, {len(todo)} runs"
    )
    if args.window is None:
        chosen, lines = choose(rows, choose_methods, args.benchmarks, choose_seeds)
        print(f"\nchoosing, seeds {_seeds_text(choose_seeds)}, {', '.join(choose_methods)}:")
        print("\n".join(lines))
        print(f"chosen: W = {chosen}")
    else:
        chosen = args.window
    print(f"\nheld out, seeds {_seeds_text(held_out)}: W = {chosen} against the last report")
    print("\n".join(confirm(rows, chosen, args.methods, args.benchmarks, held_out)))
    print("\nheld out, 100 % of the budget, mean regret last → W, per benchmark:")
    print("\n".join(per_benchmark(rows, chosen, args.methods, args.benchmarks, held_out)))
    return 0


def _seeds_text(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    s = sorted(seeds)
    if s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0])
    return ",".join(map(str, s))


if __name__ == "__main__":
    sys.exit(main())
