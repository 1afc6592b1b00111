"""The study spec: a TOML file read into frozen sections, with every problem listed by key path.

A bad spec is refused whole at submit, so validation never stops at the first mistake: each
section is read with a :class:`~hpod.core.problems.Section` that records what is wrong and
carries on with the default, and the problems of all sections are raised together in one
:class:`SpecError`.

Pure: nothing here touches the filesystem except :meth:`StudySpec.from_file`; ``workdir`` is
resolved against ``base_dir`` as a path only (the daemon checks that it exists).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpod.core import otx, passenv
from hpod.core.budget import Shape, subset_ratio
from hpod.core.command import command_problems
from hpod.core.deadlines import parse_deadline
from hpod.core.durations import format_duration
from hpod.core.objective import Metric, Objective, ObjectiveMode
from hpod.core.problems import Section, is_number
from hpod.core.searchers import GridSearcher
from hpod.core.sizes import format_size, parse_size
from hpod.core.space import Config, Param, ParamType, ParamValue, SearchSpace
from hpod.errors import SpecError

# The deepest a spec's tables and arrays nest (a parameter's range in its table in [space] is 3).
MAX_SPEC_DEPTH = 16
# TOML's integers are 64-bit (its spec: one that does not fit "must" be an error); tomllib reads
# any, and 0xfff... of 5,000 digits is one no message can print and no float can hold.
_INT64 = 2**63
# A dotted key (or table header) of more parts than a spec nests: tomllib takes time quadratic in
# the parts (20,000 of them: 5 s on the event loop), so such a spec is refused before it is read.
# A key starts a line or follows one of { , [ (an inline table, a header); a string is one part.
_DEEP_KEY = re.compile(
    r"""(?:^|[{,\[])[ \t]*(?:(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')[ \t]*\.[ \t]*)"""
    + f"{{{MAX_SPEC_DEPTH}}}",
    re.MULTILINE,
)


def _too_deep() -> str:
    return (
        f"the spec nests arrays or tables more than {MAX_SPEC_DEPTH} deep; no key takes that "
        "(see docs/spec.md)"
    )


def _shape_problems(raw: dict[str, Any]) -> list[str]:
    """What no reader of the spec's tables should meet: nesting past :data:`MAX_SPEC_DEPTH`,
    integers past 64 bits. Walked without recursing: a spec may be as deep as TOML allows."""
    problems: list[str] = []
    stack: list[tuple[str, Any, int]] = [("", raw, 1)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not -_INT64 <= item < _INT64:
                problems.append(f"{path}: integer out of TOML's 64-bit range")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > MAX_SPEC_DEPTH:
            return [_too_deep()]
        if isinstance(item, list):
            stack.extend((f"{path}[{i}]", value, depth + 1) for i, value in enumerate(item))
        else:
            stack.extend((f"{path}.{k}" if path else k, v, depth + 1) for k, v in item.items())
    return sorted(problems)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME = passenv.ENV_NAME
# The daemon sets these for every trial; a study overriding them would break the trial contract.
_RESERVED_ENV = re.compile(r"HPOD_.*|CUDA_VISIBLE_DEVICES|CUDA_DEVICE_ORDER")


class SchedulerType(enum.StrEnum):
    FIFO = "fifo"  # every trial runs to max_resource
    ASHA = "asha"
    HYPERBAND = "hyperband"
    DYHPO = "dyhpo"
    MEDIAN = "median"  # median stopping rule


class RungType(enum.StrEnum):
    PROMOTION = "promotion"  # pause at a rung, resume from the checkpoint when promoted
    STOPPING = "stopping"  # keep running past a rung unless stopped there


class SearcherType(enum.StrEnum):
    RANDOM = "random"
    GRID = "grid"
    BO = "bo"
    DYHPO = "dyhpo"


class Acquisition(enum.StrEnum):
    UCB = "ucb"
    EI = "ei"


# A fifo study needs no rungs, so max_resource may be left out there; trials then get this as
# HPOD_MAX_RESOURCE. Every other scheduler needs it written down.
DEFAULT_FIFO_MAX_RESOURCE = 10
# What a spec that names no scheduler type gets where it writes down scheduler.max_resource (so
# there are rungs): the method with the best worst case over the quality suite (issue 19,
# bench/results/quality.md, docs/schedulers.md "The default"). Without max_resource there is no
# rung to stop at: fifo and random search, as before. A spec that names a type keeps its own
# searcher default (random; dyhpo's with dyhpo).
DEFAULT_SCHEDULER = SchedulerType.HYPERBAND
DEFAULT_SEARCHER = SearcherType.BO
# The default pair's BO starts from this many random configurations (searcher.num_init_trials,
# where the spec leaves it out), not a named bo's 5: its model is then also of a level that many
# configurations reached, a lower rung under Hyperband, and it stops chasing the one that was best
# early (bench/results/quality.md: ahead of 5 or level on every benchmark, held-out seeds too).
DEFAULT_PAIR_NUM_INIT_TRIALS = 20
# And a quarter of its turns after those are drawn at random too (searcher.random_fraction, where
# the spec leaves it out; a named bo's is 0): its model, of the level 20 configurations reached,
# proposes near what it has seen, and on powerlaw, whose low rungs rank right, the wider search
# of random draws was what every ASHA had over it (bench/results/quality.md).
DEFAULT_PAIR_RANDOM_FRACTION = 0.25
# [report] log_limit: a trial's log past this is cut to its last half by the daemon (a 64 MiB
# default keeps any traceback and hours of progress lines, and a printing loop cannot fill a disk).
DEFAULT_LOG_LIMIT = 64 * 1024**2
# How long a trial's report waits for its daemon by default: a restart takes seconds, a crash
# loop under systemd's RestartSec a minute. hpod.trial has the same default for a trial started
# by a daemon that does not set HPOD_RECONNECT_TIMEOUT.
DEFAULT_RECONNECT_TIMEOUT = 120.0
MIN_LOG_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    type: SchedulerType = SchedulerType.FIFO
    min_resource: int = 1
    max_resource: int = DEFAULT_FIFO_MAX_RESOURCE
    reduction_factor: float = 3.0
    rung_type: RungType = RungType.PROMOTION
    brackets: int = 1  # hyperband (and asha): how many brackets
    rung_levels: tuple[int, ...] | None = None  # None: min_resource * reduction_factor ** k
    grace_period: int = 1  # median: no stopping before this resource level
    min_trials: int = 3  # median: reports needed at a level before the median counts
    probability_sh: float = 0.25  # dyhpo: the chance of a successive-halving promotion
    # hyperband: each bracket's share weighted by how well its first rung's ranks agree with the
    # top's in the study's own trials (hpod.core.rungs.rank_agreement); on with the default
    adaptive_brackets: bool = False
    # [scheduler.options]: free-form knobs passed to an experimental scheduler as they are.
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type.value,
            "min_resource": self.min_resource,
            "max_resource": self.max_resource,
            "reduction_factor": self.reduction_factor,
            "rung_type": self.rung_type.value,
            "brackets": self.brackets,
            "grace_period": self.grace_period,
            "min_trials": self.min_trials,
            "probability_sh": self.probability_sh,
            "adaptive_brackets": self.adaptive_brackets,
        }
        if self.rung_levels is not None:
            out["rung_levels"] = list(self.rung_levels)
        if self.options:
            out["options"] = dict(self.options)
        return out


@dataclass(frozen=True, slots=True)
class SearcherSpec:
    type: SearcherType = SearcherType.RANDOM
    seed: int = 0
    points_to_evaluate: tuple[Config, ...] = ()
    grid_points: int = 5  # grid: values per continuous parameter
    # grid: a grid larger than limits.max_trials runs its first max_trials points, not refused
    partial_grid: bool = False
    # bo:
    num_init_trials: int = 5  # random configurations before the model is used
    acquisition: Acquisition = Acquisition.UCB
    kappa: float = 2.0  # ucb exploration weight
    kappa_decay: float = 1.0  # kappa *= kappa_decay per suggestion after the delay
    kappa_decay_delay: int = 0
    random_fraction: float = 0.0  # of the suggestions after num_init_trials, drawn at random

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "seed": self.seed,
            "points_to_evaluate": [dict(p) for p in self.points_to_evaluate],
            "grid_points": self.grid_points,
            "partial_grid": self.partial_grid,
            "num_init_trials": self.num_init_trials,
            "acquisition": self.acquisition.value,
            "kappa": self.kappa,
            "kappa_decay": self.kappa_decay,
            "kappa_decay_delay": self.kappa_decay_delay,
            "random_fraction": self.random_fraction,
        }


@dataclass(frozen=True, slots=True)
class ResourcesSpec:
    # 0: the trial takes a CPU slot and no GPU (CUDA_VISIBLE_DEVICES is empty). The default,
    # so a spec without [resources] runs anywhere, including the CI machines.
    gpus_per_trial: int = 0
    trials_per_gpu: int = 1  # > 1 shares one GPU between that many trials
    # Where the daemon has no GPU, run on CPU slots instead of refusing the submit.
    cpu_fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gpus_per_trial": self.gpus_per_trial,
            "trials_per_gpu": self.trials_per_gpu,
        }
        if self.cpu_fallback:
            out["cpu_fallback"] = True
        return out


@dataclass(frozen=True, slots=True)
class LimitsSpec:
    max_trials: int | None = None
    max_concurrent: int | None = None
    optimization_time: float | None = None  # seconds of wall clock for the study
    compute_time: float | None = None  # seconds x devices held, summed over trials
    trial_time: float | None = None  # seconds of one trial, summed over its runs
    # Epoch seconds by which the study ends (hpod.core.deadlines), whatever its clocks say.
    deadline: float | None = None
    # The time budget (hpod.core.budget, docs/time-budget.md): the study may take this many
    # times one full training to ``full_resource``, measured from its own trials.
    time_ratio: float | None = None
    full_resource: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("max_trials", "max_concurrent", "optimization_time", "compute_time"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.trial_time is not None:
            out["trial_time"] = self.trial_time
        if self.deadline is not None:
            out["deadline"] = self.deadline
        if self.time_ratio is not None:
            out["time_ratio"] = self.time_ratio
        if self.full_resource is not None:
            out["full_resource"] = self.full_resource
        return out


@dataclass(frozen=True, slots=True)
class ReportSpec:
    period: float = 60.0  # seconds between rewrites of report.json / report.csv
    top_k: int = 5
    keep_checkpoints: int | None = None  # None: keep every checkpoint
    # Bytes a trial's stdout.log or stderr.log may grow to before the daemon cuts it to its tail.
    log_limit: int = DEFAULT_LOG_LIMIT

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"period": self.period, "top_k": self.top_k}
        if self.keep_checkpoints is not None:
            out["keep_checkpoints"] = self.keep_checkpoints
        out["log_limit"] = self.log_limit
        return out


class ExecutorType(enum.StrEnum):
    LOCAL = "local"  # the daemon starts each trial's command on a slot of its own
    EXTERNAL = "external"  # the caller asks for a trial, runs it wherever it likes, and tells
    SLURM = "slurm"  # each run is a Slurm job, submitted with sbatch (docs/slurm.md)


# [executor] poll (slurm): how often the daemon asks Slurm (squeue) how its jobs are.
DEFAULT_SLURM_POLL = 2.0
# The keys only a Slurm executor has.
SLURM_KEYS = (
    "partition",
    "account",
    "qos",
    "time_limit",
    "gpus",
    "gres",
    "cpus",
    "memory",
    "sbatch_args",
    "setup",
    "poll",
    "checkpoint_root",
)


@dataclass(frozen=True, slots=True)
class SlurmSpec:
    """``[executor] type = "slurm"``: what each run's job asks Slurm for (docs/slurm.md)."""

    partition: str | None = None  # --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time_limit: float | None = None  # seconds: --time (whole minutes, rounded up)
    gpus: int = 0  # --gpus (per job); 0 = none asked for
    gres: str | None = None  # --gres, in place of --gpus ("gpu:a100:1")
    cpus: int | None = None  # --cpus-per-task
    memory: int | None = None  # bytes: --mem (MiB, rounded up)
    sbatch_args: tuple[str, ...] = ()  # more sbatch arguments, as they are
    setup: str | None = None  # shell lines run in the job before the trial's command
    poll: float = DEFAULT_SLURM_POLL
    # Shared storage every node mounts at the same path: each trial's folder (its checkpoint,
    # logs and exit status) is <checkpoint_root>/<study>/<trial>. None: the daemon's state dir.
    checkpoint_root: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in SLURM_KEYS:
            value = getattr(self, key)
            if value is None or value == () or (key == "gpus" and value == 0):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


# [executor] lease: how long a handed-out trial may go without a report before it is taken back.
DEFAULT_LEASE = 600.0


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    type: ExecutorType = ExecutorType.LOCAL
    # external only: a trial handed out by `ask` that sends nothing (no report, no tell) for
    # this long is taken back (recorded interrupted) and handed out again.
    lease: float = DEFAULT_LEASE
    # local Python trials only: each run forked from the study's pre-started interpreter, which
    # has done these imports (docs/warm-start.md).
    warm_start: bool = False
    warm_imports: tuple[str, ...] = ()
    # slurm only: what each job asks for.
    slurm: SlurmSpec | None = None

    @property
    def external(self) -> bool:
        return self.type is ExecutorType.EXTERNAL

    @property
    def remote(self) -> bool:
        """Its runs are not the daemon's processes (handed out, or Slurm jobs): they take no
        slot of the pool and outlive the daemon's stop."""
        return self.type is not ExecutorType.LOCAL

    def to_dict(self) -> dict[str, Any]:
        if self.slurm is not None:
            return {"type": self.type.value, **self.slurm.to_dict()}
        out: dict[str, Any] = {"type": self.type.value, "lease": self.lease}
        if self.warm_start:
            out.update(warm_start=True, warm_imports=list(self.warm_imports))
        return out


@dataclass(frozen=True, slots=True)
class OomSpec:
    """``[oom]``: what a trial that ran out of memory gets (docs/oom.md). With no
    ``batch_size_key`` an out-of-memory exit is a plain failure."""

    # The configuration key halved on each retry (hpopt's batch_size_name); None: no retries.
    batch_size_key: str | None = None
    max_retries: int = 3  # retries of one trial, at most
    min_value: int = 1  # the floor: a trial already at it is not retried but failed

    @property
    def enabled(self) -> bool:
        return self.batch_size_key is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_retries": self.max_retries, "min_value": self.min_value}
        if self.batch_size_key is not None:
            out["batch_size_key"] = self.batch_size_key
        return out


_TOP_KEYS = (
    "name",
    "command",
    "workdir",
    "env",
    "pass_env",
    "priority",
    "stop_grace_period",
    "reconnect_timeout",
    "objective",
    "space",
    "scheduler",
    "searcher",
    "resources",
    "limits",
    "report",
    "executor",
    "oom",
)


@dataclass(frozen=True, slots=True)
class StudySpec:
    name: str
    command: tuple[str, ...]
    workdir: Path  # absolute
    objective: Objective
    space: SearchSpace
    env: dict[str, str] = field(default_factory=dict)
    # Names of the submitter's environment its trials get, beyond hpod.core.passenv.PASSED.
    pass_env: tuple[str, ...] = ()
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    priority: int = 1
    stop_grace: float = 10.0  # seconds between SIGTERM and SIGKILL
    # Seconds a trial's report waits for a daemon that went away (killed, restarting) before it
    # fails: HPOD_RECONNECT_TIMEOUT in the trial's environment (hpod.trial). 0: one reconnect.
    reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT
    # Who starts the trials: the daemon (local), or the caller of `ask` (external).
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    # What a trial that ran out of memory gets: retries with a halved batch (docs/oom.md).
    oom: OomSpec = field(default_factory=OomSpec)
    # The key paths the time budget filled in because the spec left them out
    # ("scheduler.type", "space.subset_ratio", ...): said by preview and show. Not part of the
    # spec's form: reading it again derives the same.
    derived: tuple[str, ...] = field(default=(), compare=False)

    # -- named constructors -------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, *, base_dir: Path | str, stored: bool = False) -> StudySpec:
        if _DEEP_KEY.search(text):
            raise SpecError([_too_deep()])
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            if otx.looks_like_yaml(text):
                raise SpecError(
                    [
                        "the spec is YAML, not TOML (OTX's hpo_config.yaml?): name the file "
                        f".yaml and hpod reads it as OTX's format (docs/otx.md); TOML said: {exc}"
                    ]
                ) from None
            raise SpecError([f"TOML syntax error: {exc}"]) from None
        except RecursionError:  # tomllib recurses once per level of an array or inline table
            raise SpecError([_too_deep()]) from None
        except ValueError:  # not a TOMLDecodeError: int() refused an integer of 4,301+ digits
            raise SpecError(
                ["an integer in the spec has thousands of digits; no key takes a number that large"]
            ) from None
        # Dotted keys and table headers nest without recursing; what reads the tables does.
        shape = _shape_problems(raw)
        if shape:
            raise SpecError(shape)
        return cls.from_mapping(raw, base_dir=base_dir, stored=stored)

    @classmethod
    def from_file(cls, path: Path | str, *, command: Sequence[str] | None = None) -> StudySpec:
        """A TOML spec, or OTX's ``hpo_config.yaml`` (a ``.yaml``/``.yml`` file, docs/otx.md).
        ``command``: the training command given outside the file (YAML only)."""
        p = Path(path)
        text = spec_file_text(p, command=command)
        try:
            return cls.from_toml(text, base_dir=p.absolute().parent)
        except SpecError as exc:
            if otx.is_yaml_path(p):
                raise SpecError([otx.back(problem) for problem in exc.problems]) from None
            raise

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], *, base_dir: Path | str, stored: bool = False
    ) -> StudySpec:
        """A parsed spec (TOML tables, or :meth:`to_dict`'s output); SpecError lists all.

        ``stored``: a spec read back from the store, admitted by an older hpod. The checks that
        only guard a submit (the grid's size, placeholder formats) are not held against it, or
        a study that was running would be dropped at the restart; a command that cannot be
        rendered fails its trials instead.
        """
        if not isinstance(raw, Mapping):
            raise SpecError([f"expected a table at the top of the spec, got {type(raw).__name__}"])
        problems: list[str] = []
        top = Section(raw, "", problems, _TOP_KEYS)

        name = top.string("name", required=True)
        if name is not None and not _NAME.fullmatch(name):
            problems.append(
                f"name: {name!r} must be 1 to 64 letters, digits, _ . - and start with a "
                "letter or digit"
            )
        executor = _read_executor(top.table("executor"), problems)
        # An external study's trials are started by whoever asks for them: no command needed.
        command = (
            []
            if executor.external and top.get("command") in (None, [], "")
            else _read_command(top.get("command"), problems)
        )
        workdir = _resolve_workdir(top.string("workdir", default="."), base_dir)
        env = _read_env(top.get("env"), problems)
        pass_env = _read_pass_env(top.get("pass_env"), problems)
        priority = top.integer("priority", default=1, minimum=0)
        stop_grace = top.duration("stop_grace_period", default=10.0, positive=False)
        reconnect_timeout = top.duration(
            "reconnect_timeout", default=DEFAULT_RECONNECT_TIMEOUT, positive=False
        )

        space: SearchSpace | None = None
        if "space" not in raw:
            problems.append("space: missing; add a [space] table with at least one parameter")
        else:
            try:
                space = SearchSpace.from_mapping(raw["space"], "space")
            except SpecError as exc:
                problems.extend(exc.problems)

        objective = _read_objective(top.table("objective", required=True), problems)
        limits = _read_limits(top.table("limits"), problems)
        derived: list[str] = []
        sched_sec = top.table("scheduler")
        if limits.time_ratio is not None and sched_sec is None:
            sched_sec = Section({}, "scheduler", problems, _SCHEDULER_KEYS)
        limits = _budget_limits(limits, sched_sec, problems)
        scheduler = _read_scheduler(sched_sec, problems, limits, derived)
        if space is not None and limits.time_ratio is not None:
            space = _budget_space(space, scheduler, limits, derived)
        # The default pair: a spec that named no scheduler type and got the default scheduler
        # gets the default searcher too.
        default_pair = (
            sched_sec is not None
            and not sched_sec.has("type")
            and scheduler.type is DEFAULT_SCHEDULER
            and limits.time_ratio is None
        )
        searcher = _read_searcher(
            top.table("searcher"), space, scheduler, problems, default_pair=default_pair
        )
        if default_pair:
            derived.append("scheduler.type")
            if searcher.type is DEFAULT_SEARCHER:
                derived.append("searcher.type")
        resources = _read_resources(top.table("resources"), problems)
        report = _read_report(top.table("report"), problems)
        oom = _read_oom(top.table("oom"), space, problems)
        if executor.warm_start and command:
            why = warm_command_problem(tuple(str(c) for c in command))
            if why is not None:
                problems.append(f"executor.warm_start: {why}; got {shlex.join(map(str, command))}")
        if executor.slurm is not None:
            if limits.max_concurrent is None:
                problems.append(
                    'limits.max_concurrent: needed with [executor] type = "slurm": it bounds '
                    "the study's jobs, queued and running"
                )
            if resources.gpus_per_trial > 0 and executor.slurm.gres is None:
                asked = executor.slurm.gpus
                if asked and asked != resources.gpus_per_trial:
                    problems.append(
                        f"executor.gpus: {asked} differs from resources.gpus_per_trial "
                        f"({resources.gpus_per_trial}); give one of them"
                    )
                executor = dataclasses.replace(
                    executor,
                    slurm=dataclasses.replace(executor.slurm, gpus=resources.gpus_per_trial),
                )
        if executor.external and resources.gpus_per_trial > 0:
            problems.append(
                f"resources.gpus_per_trial: an external study's trials run where their caller "
                f"starts them, on no slot or GPU of the daemon's; got {resources.gpus_per_trial}, "
                "leave it 0 (or out)"
            )
        top.finish()
        if space is not None and not stored:
            problems.extend(_grid_problems(space, searcher, limits))

        raw_space = raw.get("space")
        if command and isinstance(raw_space, Mapping) and not stored:
            # Checked against the keys as written, so a mistake in one parameter's range does
            # not hide a misspelt placeholder; only a parameter that was read has values to try.
            examples = {
                str(k): _examples(space[str(k)]) if space is not None else () for k in raw_space
            }
            problems.extend(command_problems(command, examples))

        if problems:
            raise SpecError(problems)
        # No problems means every required part was read.
        assert name is not None
        assert objective is not None
        assert space is not None
        return cls(
            name=name,
            command=tuple(command),
            workdir=workdir,
            objective=objective,
            space=space,
            env=env,
            pass_env=pass_env,
            scheduler=scheduler,
            searcher=searcher,
            resources=resources,
            limits=limits,
            report=report,
            priority=priority,
            stop_grace=stop_grace,
            reconnect_timeout=reconnect_timeout,
            executor=executor,
            oom=oom,
            derived=tuple(derived),
        )

    # -- forms --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; :meth:`from_mapping` reads it back to an equal spec."""
        out: dict[str, Any] = {
            "name": self.name,
            "command": list(self.command),
            "workdir": str(self.workdir),
            "priority": self.priority,
            "stop_grace_period": self.stop_grace,
            "objective": self.objective.to_dict(),
            "space": self.space.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "searcher": self.searcher.to_dict(),
            "resources": self.resources.to_dict(),
            "limits": self.limits.to_dict(),
            "report": self.report.to_dict(),
        }
        if self.env:
            out["env"] = dict(self.env)
        if self.pass_env:
            out["pass_env"] = list(self.pass_env)
        if self.reconnect_timeout != DEFAULT_RECONNECT_TIMEOUT:
            out["reconnect_timeout"] = self.reconnect_timeout
        if self.executor != ExecutorSpec():
            out["executor"] = self.executor.to_dict()
        if self.oom != OomSpec():
            out["oom"] = self.oom.to_dict()
        return out

    def describe_limits(self) -> dict[str, str]:
        """The time limits in short human form, for ``hpodctl show``."""
        out: dict[str, str] = {}
        for key in ("optimization_time", "compute_time", "trial_time"):
            value = getattr(self.limits, key)
            if value is not None:
                out[key] = format_duration(value)
        return out


def spec_file_text(path: Path | str, *, command: Sequence[str] | None = None) -> str:
    """The TOML text a spec file submits: a TOML file's own, or the spec OTX's
    ``hpo_config.yaml`` makes (:mod:`hpod.core.otx`). SpecError: unreadable, or YAML problems."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError([f"{p}: cannot read the spec: {reason}"]) from None
    if otx.is_yaml_path(p):
        return otx.spec_toml(text, path=p, command=command, budget=has_time_budget())
    if command:
        raise SpecError(
            [
                f"{p}: a TOML spec names its own command (command = [...]); a command after "
                "the file is for OTX's hpo_config.yaml only"
            ]
        )
    return text


def has_time_budget() -> bool:
    """Whether [limits] takes the time budget (time_ratio, full_resource: docs/otx.md)."""
    names = set(LimitsSpec.__dataclass_fields__)
    return {"time_ratio", "full_resource"} <= names


# -- placeholders ---------------------------------------------------------------------------------


def _examples(param: Param) -> tuple[ParamValue, ...]:
    """Values to try a placeholder's format on: every choice, and a range's two ends in the form
    a trial gets them (an int for an integral quniform, so ``{w:04d}`` passes and ``{lr:d}`` is
    refused). Whether a format applies hangs on the value's type, which is the same across a
    range, and rarely on its size, which the ends bound."""
    if param.type is ParamType.CHOICE:
        return param.choices
    return (param.normalize(param.low), param.normalize(param.high))


def _grid_problems(space: SearchSpace, searcher: SearcherSpec, limits: LimitsSpec) -> list[str]:
    # A quantized parameter's whole lattice is on the grid, so a grid is easily larger than the
    # trials allowed; cut short, it runs in grid order, where the first parameter barely moves.
    # That is refused unless asked for, rather than found out after the study.
    limit = limits.max_trials
    if searcher.type is not SearcherType.GRID or searcher.partial_grid or limit is None:
        return []
    # The searcher's own count: points_to_evaluate first, each grid point once.
    size = GridSearcher(space, searcher.grid_points, searcher.points_to_evaluate).size
    if size <= limit:
        return []
    return [
        f"limits.max_trials: {limit} trials cannot run the grid's {size} points; raise it, or "
        f"set searcher.partial_grid = true to run the first {limit} in grid order"
    ]


# -- reading sections (each with a :class:`Section`) ---------------------------------------------


def _read_command(value: Any, problems: list[str]) -> list[str]:
    if value is None:
        problems.append('command: missing; e.g. command = ["python", "train.py", "--lr", "{lr}"]')
        return []
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            problems.append(f"command: cannot split {value!r}: {exc}")
            return []
        if not parts:
            problems.append("command: must not be empty")
        return parts
    if isinstance(value, list | tuple):
        if not value:
            problems.append("command: must not be empty")
            return []
        bad = [i for i, v in enumerate(value) if not isinstance(v, str)]
        for i in bad:
            problems.append(f"command[{i}]: must be a string, got {value[i]!r}")
        return [] if bad else list(value)
    problems.append(f"command: must be a list of strings or a string, got {value!r}")
    return []


def _resolve_workdir(workdir: str, base_dir: Path | str) -> Path:
    # Path arithmetic only: the daemon checks that the folder exists, as the submitting user.
    base = Path(base_dir)
    if not base.is_absolute():
        base = Path(os.path.abspath(base))
    return Path(os.path.normpath(base / workdir))


def _read_env(value: Any, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f'env: expected a table of NAME = "value", got {value!r}')
        return {}
    out: dict[str, str] = {}
    for key, v in value.items():
        where = f"env.{key}"
        if not _ENV_NAME.fullmatch(str(key)):
            problems.append(f"{where}: not a valid environment variable name")
        elif _RESERVED_ENV.fullmatch(str(key)):
            problems.append(f"{where}: set by the daemon for every trial; it cannot be overridden")
        if isinstance(v, str):
            out[str(key)] = v
        elif is_number(v):
            # `OMP_NUM_THREADS = 4` is what people write; the environment only holds strings.
            out[str(key)] = str(v)
        else:
            problems.append(f"{where}: must be a string, got {v!r}")
    return out


def _read_pass_env(value: Any, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f'pass_env: expected a list of names like ["HF_HOME"], got {value!r}')
        return ()
    names: list[str] = []
    for i, name in enumerate(value):
        where = f"pass_env[{i}]"
        if not isinstance(name, str) or not passenv.ENV_NAME.fullmatch(name):
            problems.append(f"{where}: {name!r} is not a valid environment variable name")
        elif passenv.never_passed(name):
            problems.append(
                f"{where}: {name} is the daemon's to set (or the service manager's); it is "
                "never passed to a trial"
            )
        elif name not in names:
            names.append(name)
    return tuple(names)


def _read_objective(sec: Section | None, problems: list[str]) -> Objective | None:
    if sec is None:
        return None
    if sec.has("metrics"):
        return _read_objectives(sec, problems)
    sec.keys = ("metric", "mode", "resource")
    metric = sec.string("metric", required=True)
    # No default mode: a wrong direction would silently optimize for the worst trials.
    mode = sec.choice("mode", ObjectiveMode, None)
    resource = sec.string("resource", default="epoch")
    sec.finish()
    if metric is not None and metric == resource:
        sec.problem("resource", f"must differ from objective.metric ({metric!r})")
        return None
    if metric is None or mode is None or resource is None:
        return None
    return Objective(metric=metric, mode=mode, resource=resource)


def _read_objectives(sec: Section, problems: list[str]) -> Objective | None:
    """The multi-objective form: ``[[objective.metrics]]`` tables, each a name and a mode."""
    sec.keys = ("metrics", "resource")
    for key in ("metric", "mode"):
        if sec.has(key):
            sec.problem(
                key,
                "give either metric and mode (one objective) or [[objective.metrics]] "
                "(several, each with its name and mode), not both",
            )
    resource = sec.string("resource", default="epoch")
    raw = sec.get("metrics")
    metrics: list[Metric] = []
    ok = True
    if not isinstance(raw, list) or not all(isinstance(m, Mapping) for m in raw):
        sec.problem(
            "metrics",
            "expected a list of tables, each with a name and a mode "
            '([[objective.metrics]] name = "val_error" mode = "min")',
        )
        ok = False
        raw = []
    elif len(raw) < 2:
        sec.problem(
            "metrics",
            f"needs 2 or more metrics, got {len(raw)}; for one objective write "
            "metric = ... and mode = ... instead",
        )
        ok = False
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        m = Section(entry, sec.where(f"metrics[{i}]"), problems, ("name", "mode"))
        name = m.string("name", required=True)
        mode = m.choice("mode", ObjectiveMode, None)
        m.finish()
        if name is not None and name in seen:
            m.problem("name", f"{name!r} is given twice; each metric once")
            name = None
        if name is not None and name == resource:
            m.problem("name", f"must differ from objective.resource ({resource!r})")
            name = None
        if name is not None:
            seen.add(name)
        if name is None or mode is None:
            ok = False
            continue
        metrics.append(Metric(name, mode))
    sec.finish()
    if not ok or resource is None:
        return None
    return Objective.multi(metrics, resource)


_RUNG_SCHEDULERS = ("asha", "hyperband", "dyhpo")

_SCHEDULER_KEYS = (
    "type",
    "min_resource",
    "max_resource",
    "reduction_factor",
    "rung_type",
    "brackets",
    "rung_levels",
    "grace_period",
    "min_trials",
    "probability_sh",
    "adaptive_brackets",
    "options",
)


def _read_scheduler(
    sec: Section | None,
    problems: list[str],
    limits: LimitsSpec | None = None,
    derived: list[str] | None = None,
) -> SchedulerSpec:
    if sec is None:
        return SchedulerSpec()
    sec.keys = _SCHEDULER_KEYS
    # With a time budget, what the spec leaves out is derived (docs/time-budget.md): ASHA with
    # the stopping rung type (one run per trial: no start-up paid again at each rung), up to
    # the final training's resource.
    budget = limits is not None and limits.time_ratio is not None
    full = limits.full_resource if limits is not None else None
    filled = derived if derived is not None else []
    if budget:
        default_type = SchedulerType.ASHA
    elif sec.has("max_resource"):
        default_type = DEFAULT_SCHEDULER
    else:
        default_type = SchedulerType.FIFO
    stype = sec.choice("type", SchedulerType, default_type)
    if budget and not sec.has("type"):
        filled.append("scheduler.type")
    if stype is not SchedulerType.FIFO and not sec.has("max_resource") and not budget:
        sec.problem("max_resource", f"missing; the {stype.value} scheduler needs it")
    min_r = sec.integer("min_resource", default=1, minimum=1)
    default_max = full if budget and full is not None else DEFAULT_FIFO_MAX_RESOURCE
    max_r = sec.integer("max_resource", default=default_max, minimum=1)
    if budget and not sec.has("max_resource"):
        filled.append("scheduler.max_resource")
    if max_r < min_r:
        sec.problem("max_resource", f"{max_r} is less than min_resource {min_r}")
    eta = sec.number("reduction_factor", default=3.0, above=1.0)
    rung_type = sec.choice(
        "rung_type", RungType, RungType.STOPPING if budget else RungType.PROMOTION
    )
    if budget and not sec.has("rung_type") and stype in _RUNG_SCHEDULERS:
        filled.append("scheduler.rung_type")
    if budget and stype in _RUNG_SCHEDULERS:
        filled.extend(
            f"scheduler.{k}"
            for k in ("min_resource", "reduction_factor", "rung_levels", "brackets")
            if not sec.has(k)
        )
    brackets = sec.integer("brackets", default=1, minimum=1)
    grace = sec.integer("grace_period", default=1, minimum=1)
    min_trials = sec.integer("min_trials", default=3, minimum=1)
    p_sh = sec.number("probability_sh", default=0.25, at_least=0.0, at_most=1.0)
    # The default (no type named, no time budget) weights its brackets by the study's own data.
    default_pair = stype is DEFAULT_SCHEDULER and not sec.has("type") and not budget
    adaptive = sec.boolean("adaptive_brackets", default=default_pair)
    if grace > max_r:
        sec.problem("grace_period", f"{grace} is more than max_resource {max_r}")

    levels: tuple[int, ...] | None = None
    raw_levels = sec.get("rung_levels")
    if raw_levels is not None:
        levels = _read_rung_levels(sec, raw_levels, min_r, max_r)

    # Hyperband with one bracket would be ASHA: unless told, it gets every bracket the rungs allow.
    from hpod.core.rungs import default_levels

    n_levels = (
        len([v for v in levels if v < max_r])
        if levels is not None
        else len(default_levels(min_r, max_r, eta))
    )
    if stype is SchedulerType.HYPERBAND and not sec.has("brackets"):
        brackets = n_levels + 1
    elif stype is SchedulerType.HYPERBAND and brackets > n_levels + 1:
        sec.problem(
            "brackets",
            f"{brackets} is more than the {n_levels + 1} brackets that {n_levels} rung level(s) "
            "allow (one per rung, plus one that starts at max_resource)",
        )

    options: Mapping[str, Any] = {}
    raw_options = sec.get("options")
    if raw_options is not None:
        if isinstance(raw_options, Mapping):
            options = dict(raw_options)
        else:
            sec.problem("options", f"expected a table, got {raw_options!r}")
    sec.finish()
    return SchedulerSpec(
        type=stype,
        min_resource=min_r,
        max_resource=max_r,
        reduction_factor=eta,
        rung_type=rung_type,
        brackets=brackets,
        rung_levels=levels,
        grace_period=grace,
        min_trials=min_trials,
        probability_sh=p_sh,
        adaptive_brackets=adaptive,
        options=options,
    )


def _read_rung_levels(sec: Section, raw: Any, min_r: int, max_r: int) -> tuple[int, ...] | None:
    if not isinstance(raw, list | tuple) or not raw:
        sec.problem("rung_levels", f"must be a non-empty list of integers, got {raw!r}")
        return None
    bad = False
    for i, v in enumerate(raw):
        if not isinstance(v, int) or isinstance(v, bool):
            sec.problem(f"rung_levels[{i}]", f"must be an integer, got {v!r}")
            bad = True
        elif not min_r <= v <= max_r:
            sec.problem(
                f"rung_levels[{i}]",
                f"{v} is outside [min_resource, max_resource] = [{min_r}, {max_r}]",
            )
            bad = True
    if bad:
        return None
    for i in range(1, len(raw)):
        if raw[i] <= raw[i - 1]:
            sec.problem("rung_levels", f"must be strictly increasing, got {list(raw)}")
            return None
    return tuple(int(v) for v in raw)


_SEARCHER_KEYS = (
    "type",
    "seed",
    "points_to_evaluate",
    "grid_points",
    "partial_grid",
    "num_init_trials",
    "acquisition",
    "kappa",
    "kappa_decay",
    "kappa_decay_delay",
    "random_fraction",
)


def _read_searcher(
    sec: Section | None,
    space: SearchSpace | None,
    scheduler: SchedulerSpec,
    problems: list[str],
    *,
    default_pair: bool = False,
) -> SearcherSpec:
    # DyHPO is one method with two halves; naming it once, on the scheduler, is enough.
    if scheduler.type is SchedulerType.DYHPO:
        default_type = SearcherType.DYHPO
    elif default_pair:
        default_type = DEFAULT_SEARCHER
    else:
        default_type = SearcherType.RANDOM
    if sec is None:
        if default_pair and default_type is SearcherType.BO:
            return SearcherSpec(
                type=default_type,
                num_init_trials=DEFAULT_PAIR_NUM_INIT_TRIALS,
                random_fraction=DEFAULT_PAIR_RANDOM_FRACTION,
            )
        return SearcherSpec(type=default_type)
    sec.keys = _SEARCHER_KEYS
    stype = sec.choice("type", SearcherType, default_type)
    if (stype is SearcherType.DYHPO) != (scheduler.type is SchedulerType.DYHPO):
        sec.problem(
            "type",
            f"{stype.value!r} with scheduler.type = {scheduler.type.value!r}: the dyhpo "
            "searcher and the dyhpo scheduler only work together",
        )
    seed = sec.integer("seed", default=0, minimum=0)
    grid_points = sec.integer("grid_points", default=5, minimum=1)
    partial_grid = sec.boolean("partial_grid", default=False)
    init_default = DEFAULT_PAIR_NUM_INIT_TRIALS if default_pair and stype is SearcherType.BO else 5
    num_init = sec.integer("num_init_trials", default=init_default, minimum=1)
    acquisition = sec.choice("acquisition", Acquisition, Acquisition.UCB)
    kappa = sec.number("kappa", default=2.0, at_least=0.0)
    kappa_decay = sec.number("kappa_decay", default=1.0, above=0.0, at_most=1.0)
    kappa_delay = sec.integer("kappa_decay_delay", default=0, minimum=0)
    fraction_default = (
        DEFAULT_PAIR_RANDOM_FRACTION if default_pair and stype is SearcherType.BO else 0.0
    )
    random_fraction = sec.number(
        "random_fraction", default=fraction_default, at_least=0.0, below=1.0
    )

    points: list[Config] = []
    raw_points = sec.get("points_to_evaluate")
    if raw_points is not None:
        where = sec.where("points_to_evaluate")
        if not isinstance(raw_points, list | tuple):
            problems.append(f"{where}: expected a list of tables, got {raw_points!r}")
        else:
            for i, point in enumerate(raw_points):
                if space is None:
                    continue  # the space's own problems are already listed
                found = space.problems(point, f"{where}[{i}]")
                if found:
                    problems.extend(found)
                else:
                    points.append(space.normalize(point))
    sec.finish()
    return SearcherSpec(
        type=stype,
        seed=seed,
        points_to_evaluate=tuple(points),
        grid_points=grid_points,
        partial_grid=partial_grid,
        num_init_trials=num_init,
        acquisition=acquisition,
        kappa=kappa,
        kappa_decay=kappa_decay,
        kappa_decay_delay=kappa_delay,
        random_fraction=random_fraction,
    )


def _read_resources(sec: Section | None, problems: list[str]) -> ResourcesSpec:
    if sec is None:
        return ResourcesSpec()
    sec.keys = ("gpus_per_trial", "trials_per_gpu", "cpu_fallback")
    gpus = sec.integer("gpus_per_trial", default=0, minimum=0)
    per_gpu = sec.integer("trials_per_gpu", default=1, minimum=1)
    fallback = sec.boolean("cpu_fallback", default=False)
    if per_gpu > 1 and gpus != 1:
        sec.problem("trials_per_gpu", f"sharing a GPU needs gpus_per_trial = 1, got {gpus}")
    sec.finish()
    return ResourcesSpec(gpus_per_trial=gpus, trials_per_gpu=per_gpu, cpu_fallback=fallback)


def _read_limits(sec: Section | None, problems: list[str]) -> LimitsSpec:
    if sec is None:
        return LimitsSpec()
    sec.keys = (
        "max_trials",
        "max_concurrent",
        "optimization_time",
        "compute_time",
        "trial_time",
        "deadline",
        "time_ratio",
        "full_resource",
    )
    deadline: float | None = None
    if sec.has("deadline"):
        try:
            deadline = parse_deadline(sec.get("deadline"))
        except ValueError as exc:
            sec.problem("deadline", str(exc))
    spec = LimitsSpec(
        max_trials=sec.integer("max_trials", minimum=1),
        max_concurrent=sec.integer("max_concurrent", minimum=1),
        optimization_time=sec.duration("optimization_time", default=None),
        compute_time=sec.duration("compute_time", default=None),
        trial_time=sec.duration("trial_time", default=None),
        deadline=deadline,
        time_ratio=(
            sec.number("time_ratio", default=0.0, above=0.0) if sec.has("time_ratio") else None
        ),
        full_resource=sec.integer("full_resource", minimum=1),
    )
    if spec.time_ratio is not None and spec.optimization_time is not None:
        sec.problem(
            "optimization_time",
            "give either optimization_time (a fixed wall clock) or time_ratio (the time "
            "measured from the trials), not both",
        )
    if spec.full_resource is not None and spec.time_ratio is None:
        sec.problem(
            "full_resource",
            "is the time budget's final training; set limits.time_ratio too (e.g. 4.0)",
        )
    sec.finish()
    return spec


def _budget_limits(
    limits: LimitsSpec, scheduler: Section | None, problems: list[str]
) -> LimitsSpec:
    """A time budget's full_resource: given, or the scheduler's max_resource when that is."""
    if limits.time_ratio is None or limits.full_resource is not None:
        return limits
    given = scheduler.get("max_resource") if scheduler is not None else None
    if isinstance(given, int) and not isinstance(given, bool) and given >= 1:
        return dataclasses.replace(limits, full_resource=given)
    if given is not None:
        return limits  # its own problem is listed with the scheduler's
    problems.append(
        "limits.full_resource: missing; time_ratio needs the final training's resource (the "
        "epochs of one full training, hpopt's num_full_iterations), e.g. full_resource = 20"
    )
    return limits


def budget_shape(scheduler: SchedulerSpec) -> Shape:
    """The scheduler's rung system as the time budget's model sizes it."""
    from hpod.core.rungs import rung_levels

    rungs = scheduler.type in (
        SchedulerType.ASHA,
        SchedulerType.HYPERBAND,
        SchedulerType.DYHPO,
    )
    if scheduler.type is SchedulerType.HYPERBAND:
        brackets = min(scheduler.brackets, len(rung_levels(scheduler)) + 1)
    else:
        brackets = 1
    return Shape(
        levels=rung_levels(scheduler) if rungs else (),
        max_resource=float(scheduler.max_resource),
        reduction_factor=scheduler.reduction_factor,
        brackets=brackets,
        stopping=scheduler.rung_type is RungType.STOPPING,
        rungs=rungs,
    )


# The config key of a trial's share of the dataset (hpod.trial.subset reads it).
SUBSET_KEY = "subset_ratio"


def _budget_space(
    space: SearchSpace, scheduler: SchedulerSpec, limits: LimitsSpec, derived: list[str]
) -> SearchSpace:
    """A time budget's subset ratio, fixed in the space when the spec neither searches nor fixes
    it and the budget cannot hold a full bracket on the whole dataset (hpod.core.budget)."""
    if SUBSET_KEY in space.names or limits.time_ratio is None or limits.full_resource is None:
        return space
    ratio = subset_ratio(
        budget_shape(scheduler),
        limits.time_ratio,
        limits.full_resource,
        limits.max_concurrent or 1,
    )
    if ratio >= 1.0:
        return space
    derived.append("space.subset_ratio")
    return SearchSpace((*space.params, Param.choice(SUBSET_KEY, [ratio])))


def _read_report(sec: Section | None, problems: list[str]) -> ReportSpec:
    if sec is None:
        return ReportSpec()
    sec.keys = ("period", "top_k", "keep_checkpoints", "log_limit")
    period = sec.duration("period", default=60.0)
    top_k = sec.integer("top_k", default=5, minimum=1)
    keep = sec.integer("keep_checkpoints", minimum=0)
    log_limit = DEFAULT_LOG_LIMIT
    if sec.has("log_limit"):
        try:
            log_limit = parse_size(sec.get("log_limit"), sec.where("log_limit"))
        except ValueError as exc:
            sec.problem("log_limit", str(exc))
        else:
            if log_limit < MIN_LOG_LIMIT:
                # The daemon keeps half the limit when it cuts a log: a few KiB of tail would
                # not hold one traceback.
                sec.problem(
                    "log_limit",
                    f"must be at least {format_size(MIN_LOG_LIMIT)}, got {sec.get('log_limit')!r}",
                )
                log_limit = DEFAULT_LOG_LIMIT
    sec.finish()
    return ReportSpec(period=period, top_k=top_k, keep_checkpoints=keep, log_limit=log_limit)


def _read_executor(sec: Section | None, problems: list[str]) -> ExecutorSpec:
    if sec is None:
        return ExecutorSpec()
    sec.keys = ("type", "lease", "warm_start", "warm_imports", *SLURM_KEYS)
    kind = sec.choice("type", ExecutorType, ExecutorType.LOCAL)
    lease = sec.duration("lease", default=DEFAULT_LEASE)
    # Said only of a type that was read: a misspelt one is its own problem.
    if sec.has("lease") and sec.get("type") in (None, ExecutorType.LOCAL.value, "slurm"):
        sec.problem("lease", 'only an external executor has a lease (type = "external")')
    warm = sec.boolean("warm_start", default=False)
    imports: tuple[str, ...] = ()
    raw = sec.get("warm_imports")
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
            sec.problem("warm_imports", 'expected a list of module names, like ["torch"]')
        else:
            bad = [m for m in raw if not _MODULE.fullmatch(m)]
            if bad:
                sec.problem("warm_imports", f"{bad[0]!r} is not a module name (like torch.nn)")
            imports = tuple(raw)
        if not warm:
            sec.problem("warm_imports", "only a warm start imports ahead (warm_start = true)")
    if warm and sec.get("type") not in (None, ExecutorType.LOCAL.value):
        sec.problem("warm_start", "only the local executor starts trials warm")
    slurm = _read_slurm(sec) if kind is ExecutorType.SLURM else None
    if sec.get("type") in (None, ExecutorType.LOCAL.value, ExecutorType.EXTERNAL.value):
        for key in SLURM_KEYS:
            if sec.has(key):
                sec.problem(key, 'only a Slurm executor has it (type = "slurm")')
    sec.finish()
    return ExecutorSpec(type=kind, lease=lease, warm_start=warm, warm_imports=imports, slurm=slurm)


# A module name for warm_imports: dotted identifiers.
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# What a warm start can run: a command that is this interpreter's, and a script or -m module.
_PYTHON = re.compile(r"python(3(\.[0-9]+)?)?")


def warm_command_problem(command: tuple[str, ...]) -> str | None:
    """Why ``command`` cannot be started warm (None: it can). A warm run is forked from an
    interpreter that the command's own ``python`` started, so the command must be
    ``python [-u] script.py args...`` or ``python [-u] -m module args...``, with no placeholder
    before the arguments."""
    if not command or not _PYTHON.fullmatch(os.path.basename(command[0])):
        return "a warm start needs a Python command: python script.py ... or python -m module"
    rest = list(command[1:])
    if rest[:1] == ["-u"]:
        rest = rest[1:]
    if rest[:1] == ["-m"]:
        if len(rest) < 2 or not _MODULE.fullmatch(rest[1]):
            return "a warm start's -m needs a module name after it"
        head = [command[0], rest[1]]
    elif not rest or rest[0].startswith("-"):
        return (
            "a warm start runs a script or a module: python script.py ... or python -m module "
            "(no other interpreter options)"
        )
    else:
        head = [command[0], rest[0]]
    if any("{" in part for part in head):
        return "a warm start's interpreter and script are fixed: no placeholder in them"
    return None


def _read_slurm(sec: Section) -> SlurmSpec:
    """The Slurm executor's keys, every problem by its key path."""
    words = {
        key: sec.string(key, required=False)
        for key in ("partition", "account", "qos", "gres", "setup")
    }
    for key in ("partition", "account", "qos", "gres"):
        value = words[key]
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            sec.problem(key, f"must be one word, as sbatch takes it; got {value!r}")
            words[key] = None
    time_limit = sec.duration("time_limit", default=None)
    gpus = sec.integer("gpus", default=0, minimum=0)
    if gpus and words["gres"] is not None:
        sec.problem("gres", "give gpus or gres, not both (gres asks for the GPUs itself)")
    cpus = sec.integer("cpus", minimum=1)
    memory: int | None = None
    if sec.has("memory"):
        try:
            memory = parse_size(sec.get("memory"), sec.where("memory"))
        except ValueError as exc:
            sec.problem("memory", str(exc))
        else:
            if memory <= 0:
                sec.problem("memory", f"must be more than 0 bytes, got {sec.get('memory')!r}")
                memory = None
    args: tuple[str, ...] = ()
    if sec.has("sbatch_args"):
        raw = sec.get("sbatch_args")
        if not isinstance(raw, list) or not all(isinstance(a, str) and a for a in raw):
            sec.problem("sbatch_args", 'expected a list of sbatch arguments ["--exclusive"]')
        else:
            args = tuple(raw)
            for i, arg in enumerate(args):
                name = arg.split("=", 1)[0]
                if name in _SBATCH_OWN:
                    sec.problem(
                        "sbatch_args",
                        f"[{i}] {name} is hpod's to set for each job (docs/slurm.md); "
                        "use the executor's own keys",
                    )
    poll = sec.duration("poll", default=DEFAULT_SLURM_POLL)
    root = sec.string("checkpoint_root", required=False)
    if root is not None and not os.path.isabs(root):
        sec.problem(
            "checkpoint_root", f"must be an absolute path (shared by every node), got {root!r}"
        )
        root = None
    return SlurmSpec(
        checkpoint_root=None if root is None else os.path.normpath(root),
        partition=words["partition"],
        account=words["account"],
        qos=words["qos"],
        time_limit=time_limit,
        gpus=gpus,
        gres=words["gres"],
        cpus=cpus,
        memory=memory,
        sbatch_args=args,
        setup=words["setup"],
        poll=poll,
    )


# sbatch arguments that hpod sets for each job itself: sbatch_args may not change them.
_SBATCH_OWN = frozenset(
    {
        "--job-name",
        "-J",
        "--output",
        "-o",
        "--error",
        "-e",
        "--open-mode",
        "--chdir",
        "-D",
        "--export",
        "--parsable",
        "--uid",
        "--gid",
        "--wrap",
        "--array",
        "-a",
    }
)


def _read_oom(sec: Section | None, space: SearchSpace | None, problems: list[str]) -> OomSpec:
    if sec is None:
        return OomSpec()
    sec.keys = ("batch_size_key", "max_retries", "min_value")
    key = sec.string("batch_size_key", required=False)
    retries = sec.integer("max_retries", default=3, minimum=1)
    floor = sec.integer("min_value", default=1, minimum=1)
    if key is not None and space is not None and key not in space:
        sec.problem(
            "batch_size_key",
            f"{key!r} is not a parameter of [space]; the key halved on each retry must be one "
            "(a fixed batch size: a choice of one value)",
        )
    elif key is not None and space is not None:
        param = space[key]
        if param.type is ParamType.CHOICE:
            numeric = all(is_number(c) for c in param.choices)
        else:
            numeric = param.is_int
        if not numeric:
            sec.problem(
                "batch_size_key",
                f"{key!r} is a parameter of [space] whose values are not all integers; a batch "
                "size is halved on each retry, so it must be an integer parameter",
            )
    sec.finish()
    return OomSpec(batch_size_key=key, max_retries=retries, min_value=floor)
