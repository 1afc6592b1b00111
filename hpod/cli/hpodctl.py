"""``hpodctl``: the command line for the daemon (and for trials that are not Python).

Every command takes ``--json`` and prints the daemon's raw result; without it the output is a
compact table for people. The global options (``--socket``, ``--json``) go before or after the
command's name. Each command is registered with an example for its ``--help`` (:class:`AddCommand`).
Exit status: 0 on success, 2 on a usage error, and one status per :class:`~hpod.errors.ErrorCode`
otherwise (``wait`` and ``submit --wait`` exit with :data:`~hpod.errors.EXIT_STUDY_NOT_COMPLETED`
when the study ended in another state); 141 (128 + SIGPIPE) when the reader of its output left.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import pwd
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from hpod import __version__, wire
from hpod.cli import budget_view, curves, dashboard
from hpod.client import Client
from hpod.core.durations import format_duration
from hpod.errors import (
    EXIT_STUDY_NOT_COMPLETED,
    EXIT_WAIT_TIMED_OUT,
    DaemonUnavailable,
    HpodError,
)

_FINAL_TRIAL_STATES = ("completed", "stopped", "failed")
_STATE_ORDER = ("running", "pending", "paused", "interrupted", "completed", "stopped", "failed")
_INT_LITERAL = re.compile(r"[+-]?\d+")
PING_WAIT_S = 30.0  # how long `ping --wait` waits for a daemon by default

Command = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # `submit hpo_config.yaml [--wait] -- python train.py ...`: what follows the first -- is a
    # training command (docs/otx.md), never hpodctl's options.
    after: list[str] | None = None
    if "--" in words:
        cut = words.index("--")
        words, after = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    if after is not None:
        if not hasattr(args, "command"):
            parser.error("only submit and preview take a command after --")
        args.command = after
    command: Command | None = getattr(args, "func", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status = command(args)
        sys.stdout.flush()  # here, where a closed pipe is still caught, not at exit
        return status
    except HpodError as err:
        print(f"hpodctl: {err.message}", file=sys.stderr)
        return err.code.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hpodctl ... | head`: the reader left. No traceback, and nothing more to write: stdout
        # goes to /dev/null so that the interpreter's last flush finds no closed pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


# -- arguments ---------------------------------------------------------------------------------


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (`hpodctl --json ls`, `hpodctl
    ls --json`). On the subcommands their default is SUPPRESS, so that a subcommand that did not
    see one keeps the value given before it."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("global options")
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="the daemon's socket (default: $HPOD_SOCKET, else the per-user or system socket)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print the raw JSON result",
    )
    return options


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description as usual, keeps the example's lines as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class AddCommand(Protocol):
    """How a command is registered (here and by the other modules of hpod/cli): its name, the
    function run, one line of help, and an example command line shown by its --help."""

    def __call__(
        self, name: str, func: Command, help_text: str, example: str
    ) -> argparse.ArgumentParser: ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpodctl",
        description="Control the hpod hyperparameter-optimization daemon.",
        epilog="Run `hpodctl COMMAND --help` for a command's options and an example.",
        parents=[_global_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"hpodctl (hpod) {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    options = _global_options(top=False)

    def add(name: str, func: Command, help_text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[options],
            help=help_text,
            description=help_text,
            epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
            formatter_class=_HelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "submit",
        _cmd_submit,
        "validate a study spec and submit it (hpo_config.yaml: SPEC [--wait] -- COMMAND ...)",
        "hpodctl submit examples/quadratic/study.toml --wait\n"
        "hpodctl submit examples/digits/hpo_config.yaml --wait -- python train.py",
    )
    p.add_argument(
        "spec", metavar="SPEC", type=Path, help="the study spec (TOML), or OTX's hpo_config.yaml"
    )
    p.add_argument("--wait", action="store_true", help="wait for the study to end")
    # Filled by main() from what follows `--`: an hpo_config.yaml's training command.
    p.set_defaults(command=None)
    add("ls", _cmd_ls, "list the studies", "hpodctl ls --json")
    p = add("show", _cmd_show, "a study's detail, failures included", "hpodctl show quadratic-1")
    p.add_argument("study", metavar="STUDY")
    p = add("trials", _cmd_trials, "a study's trials", "hpodctl trials quadratic-1")
    p.add_argument("study", metavar="STUDY")
    p = add(
        "best",
        _cmd_best,
        "the best configuration found so far; with -k, the best k trials, best first",
        "hpodctl best quadratic-1\nhpodctl best quadratic-1 -k 5 --completed",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("-k", metavar="N", type=int, default=None, help="the best N trials as a table")
    p.add_argument(
        "--completed", action="store_true", help="trials that ran to the end only (a table)"
    )
    p.add_argument(
        "--all-metrics",
        action="store_true",
        help="every metric of each one's last report (a table)",
    )
    p = add("stop", _cmd_stop, "stop a study (its owner or root)", "hpodctl stop quadratic-1")
    p.add_argument("study", metavar="STUDY")
    p = add(
        "wait",
        _cmd_wait,
        "wait for a study to end; exit 0 if it completed",
        "hpodctl wait quadratic-1 --timeout 600",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("--timeout", metavar="S", type=float, default=None, help="give up after S s")
    p = add(
        "logs",
        _cmd_logs,
        "the tail of a trial's stderr (or stdout) log",
        "hpodctl logs quadratic-1 3 --tail 20\nhpodctl logs quadratic-1 3 -f",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument("trial", metavar="TRIAL", type=int)
    stream = p.add_mutually_exclusive_group()
    stream.add_argument("--stdout", dest="stream", action="store_const", const="stdout")
    stream.add_argument("--stderr", dest="stream", action="store_const", const="stderr")
    p.set_defaults(stream="stderr")
    p.add_argument("--tail", metavar="N", type=int, default=50, help="lines (default 50)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="print new lines as they come, until it ends"
    )
    p = add(
        "ping",
        _cmd_ping,
        "check that the daemon answers; with --wait, wait for one that is starting",
        "hpodctl ping\nhpodctl ping --wait --timeout 60   # after starting `hpod serve &`",
    )
    p.add_argument("--wait", action="store_true", help="until a daemon answers (or --timeout)")
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=PING_WAIT_S,
        help=f"with --wait: give up after S s (default {PING_WAIT_S:g})",
    )
    p = add(
        "report",
        _cmd_report,
        "`report STUDY`: the study's objective report; "
        "`report key=value ...` inside a trial: report metrics and print the decision",
        "hpodctl report quadratic-1\nhpodctl report epoch=3 val_acc=0.91   # inside a trial",
    )
    p.add_argument("args", nargs="+", metavar="STUDY | key=value")
    add("gpus", _cmd_gpus, "the GPUs and the trials holding them", "hpodctl gpus")
    p = add(
        "set",
        _cmd_set,
        "change a running study (its owner or root): optimization_time, compute_time, "
        "deadline, max_trials, max_concurrent, report_period, priority",
        "hpodctl set quadratic-1 optimization_time=30m max_concurrent=4",
    )
    p.add_argument("study", metavar="STUDY")
    p.add_argument(
        "changes",
        nargs="+",
        metavar="key=value",
        help='e.g. optimization_time=30m deadline=2026-12-02T18:00 max_concurrent=4 ("none" '
        "takes a limit away)",
    )
    p = add(
        "preview",
        _cmd_preview,
        "a spec's rungs, trials per bracket and rung, and budget, before anything runs",
        "hpodctl preview examples/digits/study.toml\n"
        "hpodctl preview examples/digits/hpo_config.yaml -- python train.py",
    )
    p.add_argument(
        "spec", metavar="SPEC", type=Path, help="the study spec (TOML), or OTX's hpo_config.yaml"
    )
    p.set_defaults(command=None)
    p = add(
        "events",
        _cmd_events,
        "a study's events (every study's without STUDY), one a line",
        "hpodctl events quadratic-1 -f --json",
    )
    p.add_argument("study", metavar="STUDY", nargs="?", default=None)
    p.add_argument(
        "-f", "--follow", action="store_true", help="print new ones as they happen, until it ends"
    )
    p.add_argument(
        "--after", metavar="ID", type=int, default=0, help="only the events after this id"
    )
    p = add(
        "top",
        _cmd_top,
        "a live view: the studies, the running trials, the GPUs (q or Ctrl-C quits)",
        "hpodctl top\nhpodctl top quadratic-1 --once",
    )
    p.add_argument("study", metavar="STUDY", nargs="?", default=None, help="this study only")
    p.add_argument("--once", action="store_true", help="print the view once and exit")
    p = add(
        "completion",
        _cmd_completion,
        "a shell completion script: commands, options, study ids",
        "hpodctl completion bash > ~/.local/share/bash-completion/completions/hpodctl\n"
        'eval "$(hpodctl completion zsh)"   # in ~/.zshrc',
    )
    p.add_argument("shell", metavar="SHELL", nargs="?", choices=["bash", "zsh"], default="bash")
    p.add_argument("--studies", action="store_true", help=argparse.SUPPRESS)
    p = add(
        "decisions",
        _cmd_decisions,
        "a study's scheduling decisions, one a line",
        "hpodctl decisions quadratic-1",
    )
    p.add_argument("study", metavar="STUDY")
    curves.register(add)  # curves, plot, export
    dashboard.register(add)
    return parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's name and its parser (for the help test and shell completion)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _client(args: argparse.Namespace) -> Client:
    return Client(args.socket)


# -- commands ----------------------------------------------------------------------------------


def _cmd_submit(args: argparse.Namespace) -> int:
    spec_path: Path = args.spec
    command = _after_dashes(args.command)
    _validate_locally(spec_path, command)
    with _client(args) as client:
        result = client.submit(spec_path, command=command)
        study = str(result["study"])
        if not args.wait:
            if args.json:
                _print_json(result)
            else:
                name = result.get("name")
                print(f"submitted study {study}" + (f" ({name})" if name else ""))
            return 0
        if not args.json:
            print(f"submitted study {study}; waiting for it to end", file=sys.stderr)
    return _wait(args, study, None)


def _after_dashes(words: Sequence[str] | None) -> list[str] | None:
    """The command given after ``--`` (main() puts it in args.command), or None."""
    return list(words) if words else None


def _validate_locally(spec_path: Path, command: Sequence[str] | None = None) -> None:
    # Every problem is listed before the daemon is asked anything (the daemon checks again).
    # Imported here: the spec pulls in the search space, which `hpodctl ls` has no use for.
    from hpod.core.spec import StudySpec

    StudySpec.from_file(spec_path, command=command)


def _cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        studies = client.studies()
    if args.json:
        _print_json(studies)
        return 0
    rows = [
        [
            str(s.get("study", "")),
            str(s.get("name", "")),
            # A held study (a full disk) is running but starts nothing: `show` says why.
            str(s.get("state", "")) + (" (held)" if s.get("held") else ""),
            _done_total(s),
            _fmt_best(s.get("best")),
            _user(s.get("owner")),
        ]
        for s in studies
    ]
    if not rows:
        print("no studies")
        return 0
    _print_table(["STUDY", "NAME", "STATE", "TRIALS", "BEST", "OWNER"], rows)
    return 0


def _print_jobs(jobs: list[Mapping[str, Any]]) -> None:
    """A Slurm study's jobs, a run a line: its id, Slurm's state, node, queue and run time."""

    def span(start: Any, end: Any) -> str:
        if not isinstance(start, (int, float)):
            return "-"
        until = end if isinstance(end, (int, float)) else time.time()
        return format_duration(max(0.0, until - start))

    rows = [
        [
            str(j.get("trial")),
            str(j.get("run")),
            str(j.get("job")),
            str(j.get("state")),
            str(j.get("node") or "-"),
            span(j.get("submitted_at"), j.get("started_at") or j.get("ended_at")),
            span(j.get("started_at"), j.get("ended_at")),
        ]
        for j in jobs
    ]
    print(f"Slurm jobs ({len(jobs)}):")
    _print_table(["TRIAL", "RUN", "JOB", "STATE", "NODE", "QUEUED", "RAN"], rows)


def _cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        detail = client.study(args.study)
    if args.json:
        _print_json(detail)
        return 0
    print(_render_summary(detail))
    environment = detail.get("environment")
    if isinstance(environment, Mapping):
        print(_render_environment(environment))
    devices = detail.get("devices")
    if isinstance(devices, Mapping):
        print(_render_devices(devices))
    containment = detail.get("containment")
    if isinstance(containment, Mapping):
        print(_render_containment(containment))
    jobs = detail.get("jobs") or []
    if jobs:
        _print_jobs(jobs)
    adopted = detail.get("adopted") or []
    if adopted:
        trials = ", ".join(str(t) for t in adopted)
        print(f"adopted after a restart (running on, not relaunched): trials {trials}")
    limits = detail.get("limits")
    if isinstance(limits, Mapping) and limits:
        print("limits:")
        _print_pairs(limits, indent="  ")
    if detail.get("budget"):
        unit = detail.get("spec", {}).get("objective", {}).get("resource", "unit")
        print("\n".join(budget_view.show_lines(detail["budget"], unit)))
    changes = detail.get("changes") or []
    if changes:
        print(f"changed while running ({len(changes)}):")
        for change in changes:
            print("  " + _fmt_change(change))
    rungs = detail.get("rungs") or []
    if rungs:
        _print_rungs(rungs)
    decisions = detail.get("decisions")
    if isinstance(decisions, Mapping):
        print(_render_decisions(decisions))
    retries = detail.get("oom_retries") or []
    if retries:
        print(f"out-of-memory retries ({len(retries)}, not failures):")
        for r in retries:
            print("  " + _fmt_retry(r))
    failures = detail.get("failures") or []
    if failures:
        print(f"failures ({len(failures)}):")
        for failure in failures:
            _print_failure(failure)
    return 0


def _fmt_retry(r: Mapping[str, Any]) -> str:
    """``trial 3 run 1: bs 128 -> 64 (exited with status 1 (out of memory))``."""
    return (
        f"trial {_fmt(r.get('trial'))} run {_fmt(r.get('run'))}: {r.get('key')} "
        f"{_fmt(r.get('from'))} -> {_fmt(r.get('to'))} ({r.get('error', '')})"
    )


def _render_containment(c: Mapping[str, Any]) -> str:
    """How nothing a trial starts outlives it: a cgroup per run, or the shim's subreaper."""
    if c.get("kind") == "cgroup":
        return f"containment: a cgroup per run under {c.get('base')}"
    return f"containment: the shim's subreaper only ({c.get('reason', '')})"


def _render_devices(devices: Mapping[str, Any]) -> str:
    """Where the study's trials run: GPUs, CPU slots (and why), or nowhere yet."""
    kind = {
        "gpu": "GPUs",
        "cpu": "CPU slots",
        "none": "waiting for GPUs",
        "external": "the caller's",
    }.get(str(devices.get("kind")), str(devices.get("kind")))
    return f"devices: {kind}: {devices.get('reason', '')}"


def _render_environment(env: Mapping[str, Any]) -> str:
    """Whose environment the study's trials start from (hpod.core.passenv)."""
    if env.get("from") != "submitter":
        return "environment: the daemon's (submitted by a client that sent none)"
    names = ", ".join(str(n) for n in env.get("names") or ()) or "nothing"
    return f"environment: the submitter's ({names})"


def _render_decisions(d: Mapping[str, Any]) -> str:
    """How a study's launches were decided, and what its model fits and decisions cost."""
    parts = [
        f"{d.get('asha_promotions', 0)} ASHA promotions",
        f"{d.get('model_promotions', 0)} model promotions",
        f"{d.get('random_starts', 0)} random starts",
        f"{d.get('model_starts', 0)} model starts",
    ]
    lines = ["decisions: " + ", ".join(parts)]
    fits = f"  fits: {d.get('fits', 0)}"
    spread = d.get("fit_seconds")
    if isinstance(spread, Mapping):
        fits += f" (median {spread['median']:.3g} s, max {spread['max']:.3g} s)"
    if d.get("fitting"):
        fits += ", one running now"
        if d.get("fit_yields_to_reports"):
            fits += " (paused while reports come faster than 1,000 a second)"
    if d.get("fit_errors"):
        fits += f", {d['fit_errors']} failed (last: {d.get('last_fit_error')})"
    lines.append(fits)
    decide = d.get("decide_seconds")
    if isinstance(decide, Mapping):
        lines.append(
            f"  decision time: median {decide['median'] * 1000:.3g} ms, "
            f"max {decide['max'] * 1000:.3g} ms over {decide['count']}"
        )
    return "\n".join(lines)


def _cmd_trials(args: argparse.Namespace) -> int:
    with _client(args) as client:
        trials = client.trials(args.study)
    if args.json:
        _print_json(trials)
        return 0
    if not trials:
        print("no trials yet")
        return 0
    # Several objectives: a column per metric instead of OBJECTIVE.
    names = next((list(t["values"]) for t in trials if isinstance(t.get("values"), Mapping)), [])
    # An OOM column only where a trial was retried for running out of memory (docs/oom.md).
    oom = any(t.get("retries") for t in trials)
    rows = [
        [
            _fmt(t.get("trial")),
            _fmt(t.get("state")),
            _fmt(t.get("resource")),
            *(
                [_fmt((t.get("values") or {}).get(n)) for n in names]
                if names
                else [_fmt(t.get("objective")), _fmt(t.get("last"))]
            ),
            _fmt(t.get("runs")),
            *([_fmt_retries(t.get("retries"))] if oom else []),
            _fmt_config(t.get("config")),
        ]
        for t in trials
    ]
    # OBJECTIVE: what the answer ranks by (the mean of the last reports); LAST: the last report.
    metric_heads = [n.upper() for n in names] if names else ["OBJECTIVE", "LAST"]
    heads = ["TRIAL", "STATE", "RESOURCE", *metric_heads, "RUNS", *(["OOM"] if oom else [])]
    _print_table([*heads, "CONFIG"], rows)
    return 0


def _fmt_retries(retries: Any) -> str:
    """A trial's out-of-memory retries in a table cell: ``bs 128>64>32``, or ``-``."""
    if not isinstance(retries, list) or not retries:
        return "-"
    first = retries[0]
    chain = [_fmt(first.get("from")), *(_fmt(r.get("to")) for r in retries)]
    return f"{first.get('key')} " + ">".join(chain)


def _cmd_best(args: argparse.Namespace) -> int:
    if args.k is not None or args.completed or args.all_metrics:
        return _best_table(args)
    with _client(args) as client:
        front = client.front(args.study)
    if front and "values" in front[0]:
        # Several objectives: the Pareto front, a row per trial, a column per metric.
        if args.json:
            _print_json(front)
            return 0
        print(f"study {_fmt(front[0].get('study'))}: Pareto front of {len(front)} trials")
        _print_front(front)
        return 0
    best = front[0]
    if args.json:
        _print_json(best)
        return 0
    print(f"study      {_fmt(best.get('study'))}")
    print(f"trial      {_fmt(best.get('trial'))}")
    print(f"objective  {_fmt(best.get('objective'))}{_fmt_window(best.get('window'))}")
    if "last" in best:  # a daemon from before issue 19 sends no last report
        print(f"last       {_fmt(best.get('last'))} (its last report)")
    print(f"resource   {_fmt(best.get('resource'))}")
    config = best.get("config")
    if isinstance(config, Mapping) and config:
        print("config")
        _print_pairs(config, indent="  ")
    return 0


def _fmt_window(window: Any) -> str:
    """`` (mean of its last 5 reports)`` beside an answer's objective that averages reports."""
    if isinstance(window, int) and not isinstance(window, bool) and window > 1:
        return f" (mean of its last {window} reports)"
    return ""


def _print_front(front: Sequence[Mapping[str, Any]], *, indent: str = "") -> None:
    """A table of trials with each metric's value: TRIAL, one column per metric, RESOURCE,
    CONFIG."""
    names = list(front[0].get("values") or {}) if front else []
    header = ["TRIAL", *(n.upper() for n in names), "RESOURCE", "CONFIG"]
    rows = [
        [
            _fmt(b.get("trial")),
            *(_fmt((b.get("values") or {}).get(n)) for n in names),
            _fmt(b.get("resource")),
            _fmt_config(b.get("config")),
        ]
        for b in front
    ]
    if indent:
        rows = [[indent + row[0], *row[1:]] for row in rows]
        header = [indent + header[0], *header[1:]]
    _print_table(header, rows)


def _cmd_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.stop(args.study)
    if args.json:
        _print_json(result)
        return 0
    print(f"study {_fmt(result.get('study', args.study))}: {_fmt(result.get('state'))}")
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    for word in args.changes:
        key, eq, raw = word.partition("=")
        if not key or not eq:
            print(f"hpodctl: {word!r} is not key=value", file=sys.stderr)
            return 2
        # A number is sent as one (max_trials=10, deadline=1764700000); anything else as
        # written (30m, 2026-12-02T18:00, none): the daemon reads each as the spec would.
        number = _parse_number(raw)
        finite = number is not None and math.isfinite(number)
        changes[key] = number if finite else raw
    with _client(args) as client:
        result = client.set(args.study, **changes)
    if args.json:
        _print_json(result)
        return 0
    made = result.get("made") or []
    for change in made:
        print(f"study {_fmt(result.get('study'))}: {_fmt_change(change)}")
    if not made:
        print(f"study {_fmt(result.get('study'))}: nothing changed (it had those values)")
    return 0


def _fmt_change(change: Mapping[str, Any]) -> str:
    """``2026-12-02 02:31:05 alice: optimization_time 1h00m -> 30m`` (``uid 1000`` where the uid
    has no user name here)."""
    from hpod.core.changes import shown

    key = str(change.get("key"))
    at = change.get("at")
    when = (
        _dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(at, (int, float)) and not isinstance(at, bool)
        else _fmt(at)
    )
    before, after = shown(key, change.get("from")), shown(key, change.get("value"))
    by = change.get("by")
    who = _user(by) if _user(by) != _fmt(by) else f"uid {_fmt(by)}"
    return f"{when} {who}: {key} {before} -> {after}"


def _cmd_completion(args: argparse.Namespace) -> int:
    if args.studies:  # what the script asks for a STUDY: the ids, nothing when no daemon
        try:
            with _client(args) as client:
                print("\n".join(str(s.get("study")) for s in client.studies()))
        except HpodError:
            pass
        return 0
    from hpod.cli import completion

    sys.stdout.write(completion.script(args.shell, _commands(_parser())))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from hpod.cli import top

    return top.run(args.socket, args.study, once=args.once, as_json=args.json)


def _best_table(args: argparse.Namespace) -> int:
    """`hpodctl best STUDY -k N`: the best N trials (wire `top`), best first."""
    with _client(args) as client:
        top = client.top(
            args.study, args.k, only_completed=args.completed, all_metrics=args.all_metrics
        )
    if args.json:
        _print_json(top)
        return 0
    if not top:
        print("no trial has an objective value yet")
        return 0
    header, rows = _top_table(top)
    if args.all_metrics:
        header.append("METRICS")
        for row, t in zip(rows, top, strict=True):
            row.append(_fmt_config(t.get("metrics")))
    _print_table(header, rows)
    return 0


def _top_table(top: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The top-k as a table (`hpodctl best -k`, the objective report): rank, trial, objective
    (the estimate it ranks by) and last report (for several objectives: the Pareto front's number
    and each metric's value), resource, state, config."""
    header = ["RANK", "TRIAL", "OBJECTIVE", "LAST", "RESOURCE", "STATE", "CONFIG"]
    rows = [
        [
            _fmt(t.get("rank")),
            _fmt(t.get("trial")),
            _fmt(t.get("objective")),
            _fmt(t.get("last")),
            _fmt(t.get("resource")),
            _fmt(t.get("state")),
            _fmt_config(t.get("config")),
        ]
        for t in top
    ]
    if top and "front" in top[0]:
        names = list(top[0].get("values") or {})
        header[2:4] = ["FRONT", *(n.upper() for n in names)]
        for row, t in zip(rows, top, strict=True):
            values = t.get("values") or {}
            row[2:4] = [_fmt(t.get("front")), *(_fmt(values.get(n)) for n in names)]
    return header, rows


def _cmd_wait(args: argparse.Namespace) -> int:
    return _wait(args, args.study, args.timeout)


def _wait(args: argparse.Namespace, study: str, timeout: float | None) -> int:
    """Wait for the study to end, showing its progress on stderr (hpod/cli/waiting.py): one
    line redrawn on a terminal, plain lines elsewhere (none with --json)."""
    from hpod.cli import waiting

    tty = waiting.is_tty(sys.stderr)
    progress = None
    if tty or not args.json:
        progress = waiting.Progress(args.socket, study, sys.stderr, tty=tty).start()
    try:
        with _client(args) as client:
            summary = client.wait(study, timeout=timeout)
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        print(waiting.interrupted_message(study), file=sys.stderr)
        return 130
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        _print_json(summary)
    else:
        print(_render_summary(summary))
    state = summary.get("state")
    if timeout is not None and state == "running":
        print(
            f"hpodctl: timed out after {format_duration(timeout)}: study {study} is still "
            f"running (`hpodctl wait {study}` waits again)",
            file=sys.stderr,
        )
        return EXIT_WAIT_TIMED_OUT
    return 0 if state == "completed" else EXIT_STUDY_NOT_COMPLETED


def _cmd_logs(args: argparse.Namespace) -> int:
    if args.follow:
        from hpod.cli import logs

        with _client(args) as client:
            return logs.follow(client, args.study, args.trial, args.stream, args.tail)
    with _client(args) as client:
        text = client.logs(args.study, args.trial, stream=args.stream, tail=args.tail)
    if args.json:
        _print_json({"text": text})
    else:
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    pause = 0.02
    path = _client(args).socket_path  # opened on the first call only
    while True:
        try:
            with _client(args) as client:
                result = client.ping()
            break
        except DaemonUnavailable:
            # A daemon that is starting has no socket yet, or one that does not accept yet.
            if not args.wait or time.monotonic() + pause > deadline:
                if args.wait:
                    raise DaemonUnavailable(
                        f"no hpod daemon answered on {path} within {args.timeout:g} s"
                    ) from None
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
    if args.json:
        _print_json(result)
        return 0
    version = result.get("version", "?")
    uptime = result.get("uptime")
    up = f", up {format_duration(uptime)}" if isinstance(uptime, (int, float)) else ""
    print(f"pong from hpod {version} on {path}{up}")
    if "pid" in result:
        # The generation changes at each start and each re-exec (SIGHUP), the pid only at a start.
        print(f"pid {result['pid']}, generation {result.get('generation', '?')}")
    contained = result.get("containment")
    if isinstance(contained, Mapping):
        print(_render_containment(contained))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    words: list[str] = args.args
    with_eq = [w for w in words if "=" in w]
    if with_eq and len(with_eq) == len(words):
        return _report_metrics(words, as_json=args.json)
    if with_eq or len(words) != 1:
        print(
            "hpodctl: usage: `hpodctl report STUDY` (the objective report) or "
            "`hpodctl report key=value ...` (inside a trial)",
            file=sys.stderr,
        )
        return 2
    with _client(args) as client:
        report = client.report(words[0])
    if args.json:
        _print_json(report)
    else:
        _print_report(report)
    return 0


def _print_report(r: Mapping[str, Any]) -> None:
    """The objective report as `hpodctl report STUDY` shows it: clocks, limits, best, top-k."""
    state = _fmt(r.get("state")) + (f" ({r['end_reason']})" if r.get("end_reason") else "")
    print(f"study     {_fmt(r.get('study'))}  {state}")
    elapsed, compute = r.get("elapsed"), r.get("compute")
    if isinstance(elapsed, (int, float)) and isinstance(compute, (int, float)):
        print(f"elapsed   {format_duration(elapsed)}, compute {format_duration(compute)} x device")
    limits = r.get("limits")
    if isinstance(limits, Mapping):
        for name, u in limits.items():
            if isinstance(u, Mapping):
                print(
                    f"limit     {name}: {_fmt(u.get('used'))} of {_fmt(u.get('limit'))} "
                    f"({float(u.get('share') or 0.0):.0%})"
                )
    counts = r.get("trials")
    if isinstance(counts, Mapping):
        print(f"trials    {_fmt_counts(counts)}")
    best = r.get("best")
    best_at = f" at {_fmt(best.get('resource'))}" if isinstance(best, Mapping) else ""
    front = r.get("front")
    if isinstance(front, list) and front:
        print(f"front     {len(front)} trials (Pareto front, by crowding distance, then id):")
        _print_front(front, indent="  ")
    else:
        print(f"best      {_fmt_best(best, with_config=True)}{best_at}")
    top = r.get("top_k") or []
    if top:
        several = "front" in top[0]
        print("top (by front, crowding distance, trial id):" if several else "top:")
        _print_table(*_top_table(top))
    gpus = r.get("gpus") or []
    if gpus:
        print("gpus:")
        _print_generic(gpus)


def _report_metrics(words: Sequence[str], *, as_json: bool) -> int:
    from hpod import trial

    metrics: dict[str, int | float] = {}
    for word in words:
        key, _, raw = word.partition("=")
        value = _parse_number(raw)
        if not key or value is None:
            print(
                f"hpodctl: {word!r} is not key=NUMBER (an integer, a float, nan or inf)",
                file=sys.stderr,
            )
            return 2
        metrics[key] = value
    decision = trial.report(**metrics).value
    if as_json:
        _print_json({"decision": decision})
    else:
        print(decision)
    return 0


def _parse_number(raw: str) -> int | float | None:
    text = raw.strip()
    if _INT_LITERAL.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return None


def _cmd_preview(args: argparse.Namespace) -> int:
    # Pure computation on the spec: no daemon is asked.
    from hpod.core.preview import preview
    from hpod.core.spec import StudySpec

    out = preview(StudySpec.from_file(args.spec, command=_after_dashes(args.command)))
    if args.json:
        _print_json(out)
        return 0
    unit = out["resource"]
    print(f"study     {out['name']}")
    default = " (the default: the spec names no scheduler type)" if out.get("default") else ""
    print(f"scheduler {out['scheduler']} to {out['max_resource']} {unit}(s){default}")
    init = out.get("num_init_trials")
    before = "" if init is None else f" ({init} random configurations before its model"
    fraction = out.get("random_fraction")
    if init is not None:
        before += f", then 1 in {1 / fraction:.3g} at random)" if fraction else ")"
    print(f"searcher  {out['searcher']}{before}")
    if out["rung_levels"]:
        levels = ", ".join(str(v) for v in out["rung_levels"])
        print(f"rungs     {levels} (eta {out['reduction_factor']:g}, {out['rung_type']})")
    grid = out.get("grid")
    if grid:
        line = f"grid      {grid['points']} points ({grid['grid_points']} per continuous parameter)"
        if grid["partial"]:
            line += f"; partial_grid: the first {out['max_trials']} in grid order"
        print(line)
    for b in out["brackets"]:
        rungs = ", ".join(f"{r['trials']} at {r['level']}" for r in b["rungs"])
        print(f"bracket {b['bracket']} {b['trials']} trials: {rungs}; {b['budget']} {unit}s")
    budget = out["budget"]
    line = "budget    " + (
        "unbounded (no limits.max_trials)" if budget is None else f"{budget} {unit}s"
    )
    if out.get("fifo_budget") is not None:
        line += f" (fifo for the same trials: {out['fifo_budget']})"
    print(line)
    if out.get("note"):
        print(f"note      {out['note']}")
    if out.get("time_budget"):
        print("\n".join(budget_view.preview_lines(out["time_budget"], unit)))
    return 0


def _print_rungs(rungs: Sequence[Mapping[str, Any]]) -> None:
    print("rungs:")
    _print_table(
        ["bracket", "level", "reached", "running", "paused", "promoted", "quota"],
        [
            [
                _fmt(r.get("bracket")),
                _fmt(r.get("level")),
                _fmt(r.get("reached")),
                _fmt(r.get("running")),
                _fmt(r.get("paused")),
                _fmt(r.get("promoted")),
                "top" if r.get("top") else _fmt(r.get("quota")),
            ]
            for r in rungs
        ],
    )


def _cmd_events(args: argparse.Namespace) -> int:
    # --json: one JSON object a line (JSON Lines), so a pipe can read them as they come.
    with (
        _client(args) as client,
        client.events(args.study, args.after, follow=args.follow) as stream,
    ):
        for event in stream:
            if args.json:
                line = json.dumps(wire.tag(event), separators=(",", ":"), allow_nan=False)
            else:
                line = _fmt_event(event, with_study=args.study is None)
            print(line, flush=True)
    return 0


def _fmt_event(event: Mapping[str, Any], *, with_study: bool = False) -> str:
    """``12:03:04.512  #17  trial 3  trial_ended  state=completed objective=0.12 ...``."""
    at = event.get("at")
    when = (
        _dt.datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]
        if isinstance(at, (int, float)) and not isinstance(at, bool)
        else _fmt(at)
    )
    who = f"trial {event['trial']}" if event.get("trial") is not None else "study"
    if with_study:
        who = f"{_fmt(event.get('study'))} {who}"
    parts = [when, f"#{_fmt(event.get('id'))}", who, str(event.get("kind", "?"))]
    data = event.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            if value is None:
                continue
            if key in ("metrics", "config", "best") and isinstance(value, Mapping):
                parts.append(_fmt_config(value))
            else:
                parts.append(f"{key}={_fmt(value)}")
    return "  ".join(parts[:4]) + ("  " + " ".join(parts[4:]) if parts[4:] else "")


def _cmd_decisions(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = client.decisions(args.study)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no decisions yet")
        return 0
    _print_table(
        ["ID", "TIME", "TRIAL", "LEVEL", "DECISION"],
        [
            [
                _fmt(r.get("id")),
                _fmt_time(r.get("at")),
                _fmt(r.get("trial")),
                _fmt(r.get("level")),
                _fmt(r.get("kind")),
            ]
            for r in rows
        ],
    )
    return 0


def _cmd_gpus(args: argparse.Namespace) -> int:
    with _client(args) as client:
        gpus = client.gpus()
    if args.json:
        _print_json(gpus)
    elif isinstance(gpus, Mapping):
        _print_gpus(gpus)
    else:
        _print_generic(gpus)
    return 0


def _print_gpus(view: Mapping[str, Any]) -> None:
    """The pool: each GPU, whether hpod may lease it, and which study/trial holds it."""
    rows = []
    for g in view.get("gpus") or []:
        holders = ",".join(f"{h['study']}/{h['trial']}" for h in g.get("holders") or [])
        rows.append(
            [
                _fmt(g.get("index")),
                _fmt(g.get("name")),
                f"{_fmt(g.get('memory_used_mib'))}/{_fmt(g.get('memory_total_mib'))} MiB",
                f"{_fmt(g.get('utilization'))}%",
                str(len(g.get("foreign") or [])),
                "yes" if g.get("usable") else ("no" if g.get("allowed") else "not allowed"),
                _fmt(g.get("uuid")),
                holders or "-",
            ]
        )
    if rows:
        _print_table(["GPU", "NAME", "MEMORY", "UTIL", "FOREIGN", "FREE", "UUID", "HELD BY"], rows)
    else:
        print("no GPUs (NVML unavailable or none allowed): trials run on CPU slots")
    cpu = view.get("cpu_slots")
    if isinstance(cpu, Mapping):
        held = ", ".join(f"{h['study']}/{h['trial']}" for h in cpu.get("holders") or [])
        print(f"cpu slots {_fmt(cpu.get('free'))} free of {_fmt(cpu.get('size'))}")
        if held:
            print(f"  held by {held}")


# -- rendering ---------------------------------------------------------------------------------


def _print_json(obj: Any) -> None:
    # Tagged floats keep the output valid JSON when an objective is NaN.
    print(json.dumps(wire.tag(obj), indent=2, allow_nan=False))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        # The last column (a config) is left unpadded so lines carry no trailing blanks.
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _print_pairs(pairs: Mapping[str, Any], *, indent: str = "") -> None:
    width = max((len(str(k)) for k in pairs), default=0)
    for key, value in pairs.items():
        print(f"{indent}{str(key).ljust(width)}  {_fmt(value)}")


def _render_summary(s: Mapping[str, Any]) -> str:
    lines = [
        f"study     {_fmt(s.get('study'))}",
        f"name      {_fmt(s.get('name'))}",
        f"state     {_fmt(s.get('state'))}"
        + (f" ({s['end_reason']})" if s.get("end_reason") else ""),
        f"owner     {_user(s.get('owner'))}",
        f"created   {_fmt_time(s.get('created'))}",
    ]
    if s.get("held"):
        lines.insert(3, f"held      {_fmt(s.get('held'))}")
    if s.get("ended") is not None:
        lines.append(f"ended     {_fmt_time(s.get('ended'))}")
    objective = s.get("objective")
    if isinstance(objective, Mapping) and isinstance(objective.get("metrics"), list):
        both = ", ".join(
            f"{_fmt(m.get('mode'))} {_fmt(m.get('name'))}"
            for m in objective["metrics"]
            if isinstance(m, Mapping)
        )
        lines.append(f"objective {both} over {_fmt(objective.get('resource'))}")
    elif isinstance(objective, Mapping):
        lines.append(
            f"objective {_fmt(objective.get('mode'))} {_fmt(objective.get('metric'))} "
            f"over {_fmt(objective.get('resource'))}"
        )
    counts = s.get("trials")
    if isinstance(counts, Mapping):
        lines.append(f"trials    {_done_total(s)} done: {_fmt_counts(counts)}")
    front = s.get("front")
    if isinstance(front, list):
        lines.append(f"front     {len(front)} trials (Pareto front)")
        for b in front:
            if isinstance(b, Mapping):
                values = ", ".join(f"{k}={_fmt(v)}" for k, v in (b.get("values") or {}).items())
                lines.append(
                    f"  trial {_fmt(b.get('trial'))}: {values} {_fmt_config(b.get('config'))}"
                )
    else:
        lines.append(f"best      {_fmt_best(s.get('best'), with_config=True)}")
    return "\n".join(lines)


def _print_failure(failure: Any) -> None:
    if not isinstance(failure, Mapping):
        print(f"  {_fmt(failure)}")
        return
    head = f"  trial {_fmt(failure.get('trial'))}"
    if failure.get("exit_code") is not None:
        head += f" (exit code {_fmt(failure.get('exit_code'))})"
    if failure.get("error"):
        head += f": {failure['error']}"
    print(head)
    tail = failure.get("stderr_tail")
    if tail:
        for line in str(tail).rstrip("\n").splitlines():
            print(f"      {line}".rstrip())


def _print_generic(obj: Any) -> None:
    """Readable output for results whose shape this client does not know in detail."""
    if isinstance(obj, list) and obj and all(isinstance(x, Mapping) for x in obj):
        keys: list[str] = []
        for row in obj:
            keys.extend(str(k) for k in row if str(k) not in keys)
        _print_table([k.upper() for k in keys], [[_fmt(row.get(k)) for k in keys] for row in obj])
    elif isinstance(obj, Mapping):
        scalars = {k: v for k, v in obj.items() if not isinstance(v, (list, Mapping))}
        _print_pairs(scalars)
        for key, value in obj.items():
            if isinstance(value, (list, Mapping)):
                print(f"{key}:")
                if isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
                    _print_generic(value)
                elif isinstance(value, Mapping):
                    _print_pairs(value, indent="  ")
                else:
                    for item in value:
                        print(f"  {_fmt(item)}")
    else:
        print(_fmt(obj))


def _done_total(s: Mapping[str, Any]) -> str:
    counts = s.get("trials")
    if not isinstance(counts, Mapping):
        return "-"
    done = sum(int(counts.get(state, 0)) for state in _FINAL_TRIAL_STATES)
    total = s.get("total_trials")
    if not isinstance(total, int):
        total = sum(int(v) for v in counts.values())
    return f"{done}/{total}"


def _fmt_counts(counts: Mapping[str, Any]) -> str:
    order = [k for k in _STATE_ORDER if k in counts] + [k for k in counts if k not in _STATE_ORDER]
    parts = [f"{counts[k]} {k}" for k in order if counts[k]]
    return ", ".join(parts) if parts else "none yet"


def _fmt_best(best: Any, *, with_config: bool = False) -> str:
    if not isinstance(best, Mapping):
        return "-"
    text = f"{_fmt(best.get('objective'))} (trial {_fmt(best.get('trial'))})"
    if with_config and isinstance(best.get("config"), Mapping):
        text += f" {_fmt_config(best['config'])}"
    return text


def _fmt_config(config: Any) -> str:
    if not isinstance(config, Mapping):
        return _fmt(config)
    return " ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, Mapping)):
        return json.dumps(wire.tag(value), separators=(",", ":"))
    return str(value)


@functools.lru_cache(maxsize=256)
def _user(uid: Any) -> str:
    """A uid as its user name on this machine (the daemon's --json keeps the number); the
    number where it has none."""
    if isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            pass
    return _fmt(uid)


def _fmt_time(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return _fmt(value)


if __name__ == "__main__":
    sys.exit(main())
