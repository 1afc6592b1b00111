"""The study state machine: pure, deterministic, driven by the daemon and the simulator alike.

The shell tells it what happened (a slot is free, a report arrived, a process exited) with the time
as an argument, and it answers what to do (launch this, continue, pause, stop). It never reads a
clock, touches a file or starts a process. Its whole state can be rebuilt from the trial records the
store keeps, so a restarted daemon picks up exactly where the old one was.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hpod.core.answer import AnswerIndex, Estimate, Key
from hpod.core.asha import RungScheduler
from hpod.core.history import History, TrialHistory
from hpod.core.median import MedianStoppingScheduler
from hpod.core.models import FitRequest, Owner
from hpod.core.objective import Objective
from hpod.core.pareto import non_dominated_sort, pareto_order
from hpod.core.plans import (
    IndexedScheduler,
    ModeledScheduler,
    ModeledSearcher,
    NewTrial,
    Promote,
    Scheduler,
    Searcher,
)
from hpod.core.preview import Occupancy
from hpod.core.problems import is_number
from hpod.core.rungs import max_brackets, rung_levels
from hpod.core.schedulers import FifoScheduler
from hpod.core.searchers import DistinctSearcher, GridSearcher, RandomSearcher
from hpod.core.space import Config, ParamType
from hpod.core.spec import RungType, SchedulerType, SearcherType, StudySpec
from hpod.core.states import Decision, StudyState, TrialState
from hpod.errors import BadState, InvalidParams, NotFound

# With this many failures and not one counted report, the command is broken, not unlucky: the
# study ends as failed instead of burning through max_trials.
FAILURES_BEFORE_GIVING_UP = 5


@dataclass(frozen=True)
class Launch:
    """Run a trial's ``config`` from ``resume_from`` (0: from scratch) up to ``max_resource``."""

    trial_id: int
    config: Config
    resume_from: float
    max_resource: float
    fresh: bool  # a new configuration, not a resume


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the store keeps it and as ``Study.restore`` takes it back."""

    trial_id: int
    config: Config
    state: TrialState
    bracket: int = 0
    resume_from: float = 0.0
    max_resource: float = 0.0
    runs: int = 0
    curve: tuple[tuple[float, float], ...] = ()
    error: str | None = None
    # The answer to the last report of its latest run (None: it has not reported), and whether
    # that answer was the one a shutting-down daemon forces (PAUSE; STOP before issue 13): they
    # say how a run the store still calls running would have ended had its exit been recorded
    # (see ``Study.restore``). The shell keeps both with each report. A live study's record
    # carries the scheduler's PAUSE or STOP once given, not a shell's forced answer: only the
    # shell knows why it forced one.
    last_decision: Decision | None = None
    interrupting: bool = False
    # Every metric name its reports carried, in any run, sorted: what a trial that never reported
    # the objective did report (a misspelt name), for its error.
    reported_keys: tuple[str, ...] = ()
    # A multi-objective study's counted values, one per metric (objective.names order; NaN for
    # one a report left out), by level; ``curve`` holds the first metric's. Empty otherwise.
    vectors: tuple[tuple[float, tuple[float, ...]], ...] = ()
    # Its out-of-memory retries, oldest first (:class:`OomRetry`; trials.retries in the store).
    retries: tuple[OomRetry, ...] = ()


@dataclass(frozen=True)
class OomRetry:
    """One out-of-memory retry (docs/oom.md): the run that ran out of memory, the batch key's
    value it had and the one the retry gets, when, and what the run's end said."""

    run: int
    key: str
    before: int
    after: int
    at: float
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "key": self.key,
            "from": self.before,
            "to": self.after,
            "at": self.at,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> OomRetry:
        return cls(
            run=int(raw["run"]),
            key=str(raw["key"]),
            before=int(raw["from"]),
            after=int(raw["to"]),
            at=float(raw["at"]),
            error=str(raw.get("error", "")),
        )


@dataclass(frozen=True)
class ReportOutcome:
    """How a report was taken: the answer, the level it stands at, and whether it was ranked."""

    decision: Decision
    resource: float
    counted: bool
    # The answer is the shell's ``force``, not the scheduler's: the shell records why it forced
    # it, since a shutdown's PAUSE interrupts the run where a limit's STOP ends it.
    forced: bool = False
    # What taking the report changed, for ``Study.retract_report`` (None: not from on_report).
    undo: _Undo | None = field(default=None, compare=False, repr=False)


class _Undo(NamedTuple):
    """What one ``on_report`` changed besides ``ending``: the metric names it was the first to
    carry, and whether it set the curve's point at its resource, over what (None: no point).
    A tuple: a frozen dataclass cost the report path a microsecond to build."""

    new_keys: frozenset[str]
    point: bool = False
    before: float | None = None
    before_vector: tuple[float, ...] | None = None


_NO_KEYS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DecisionRecord:
    """One scheduling decision, for the shell to store (``Study.drain_decisions``).

    ``kind``: how a launch was decided (a key of ``Study.decisions``: ``asha_promotions``,
    ``model_promotions``, ``random_starts``, ``model_starts``...), or ``pause`` / ``stop`` for a
    scheduler's answer to a report. ``level``: the resource a launch runs up to, or the level
    the report that was answered stands at. ``at``: the shell's wall time it was decided at."""

    kind: str
    trial_id: int
    level: float
    at: float

    @property
    def is_launch(self) -> bool:
        """Whether it is one of the launch counts (``Study.decisions``), not a PAUSE or STOP."""
        return self.kind.endswith(_LAUNCH_KINDS)


_LAUNCH_KINDS = ("_starts", "_promotions")


# The decision records a shell has not drained yet, at most: the daemon drains them with each
# launch and report; a caller that never drains (the simulator) keeps only the latest.
DECISION_LOG_MAX = 10_000


@dataclass(frozen=True)
class Best:
    """The trial the study answers with. ``objective``: what it ranks by, its estimate
    (:mod:`hpod.core.answer`: the mean of its last ``window`` counted reports, or its best
    one for ``*_global``); ``last``: its last counted report, beside it."""

    trial_id: int
    config: Config
    objective: float
    resource: float
    # Multi-objective: the trial's value of each metric, and the metrics' names; () otherwise.
    values: tuple[float, ...] = ()
    names: tuple[str, ...] = ()
    last: float = math.nan
    window: int = 1


@dataclass
class _Trial:
    trial_id: int
    config: Config
    state: TrialState
    bracket: int = 0
    resume_from: float = 0.0
    max_resource: float = 0.0
    runs: int = 0
    curve: dict[float, float] = field(default_factory=dict)
    # The decision that ends the current run (PAUSE or STOP), once given.
    ending: Decision | None = None
    # Set when the shell stops the process itself (a limit, the user, shutdown).
    stopped_by_shell: bool = False
    error: str | None = None
    # Every metric name its reports carried (TrialRecord.reported_keys).
    reported_keys: set[str] = field(default_factory=set)
    # Multi-objective: every metric's counted value by level (TrialRecord.vectors).
    vectors: dict[float, tuple[float, ...]] = field(default_factory=dict)
    retries: list[OomRetry] = field(default_factory=list)
    # Retried after running out of memory: its next run starts from scratch (resume_from 0).
    restart: bool = False
    # Its part of the history for a searcher that reads it (Study._observations): its curve
    # and configuration live, the configuration's key made once, the part made again only
    # once one of them is a new dict; made for every trial at every decision, the history
    # held the loop 87 ms a free slot at 1,000 trials (bench/scale.py, bo).
    observed: TrialHistory | None = field(default=None, repr=False, compare=False)

    @property
    def retry_unrun(self) -> bool:
        """Retried after running out of memory and not run since: the retry still starts from
        scratch (``restart``)."""
        return bool(self.retries) and self.retries[-1].run == self.runs

    @property
    def last_resource(self) -> float:
        # The curve is kept in resource order, so its last key is its highest level.
        return next(reversed(self.curve), 0.0)

    def move(self, new: TrialState) -> None:
        self.state = self.state.check(new, what=f"trial {self.trial_id}")

    def record(self) -> TrialRecord:
        return TrialRecord(
            trial_id=self.trial_id,
            config=dict(self.config),
            state=self.state,
            bracket=self.bracket,
            resume_from=self.resume_from,
            max_resource=self.max_resource,
            runs=self.runs,
            curve=tuple(sorted(self.curve.items())),
            error=self.error,
            last_decision=self.ending,
            reported_keys=tuple(sorted(self.reported_keys)),
            vectors=tuple(sorted(self.vectors.items())),
            retries=tuple(self.retries),
        )


class Study:
    def __init__(self, spec: StudySpec, searcher: Searcher, scheduler: Scheduler) -> None:
        self.spec = spec
        self.objective: Objective = spec.objective
        self._searcher = searcher
        self._scheduler = scheduler
        # The model-based parts, found once: those that declare the Modeled* protocols.
        self._modeled_scheduler = scheduler if isinstance(scheduler, ModeledScheduler) else None
        self._modeled_searcher = searcher if isinstance(searcher, ModeledSearcher) else None
        # A scheduler with its own index of the trials (the rung schedulers): handed every
        # trial that changed, so that its decisions walk no list of trials.
        self._indexed = scheduler if isinstance(scheduler, IndexedScheduler) else None
        self._trials: list[_Trial] = []
        # The trials in each state, and how many have a counted report: kept with every move,
        # so that a free slot, an exit and ``finished`` walk no list of trials either.
        self._in: dict[TrialState, set[int]] = {st: set() for st in TrialState}
        self._curved = 0
        # One float object per resource level for all the trials' curves: a study of 10,000
        # trials at 27 levels held 270,000 equal floats as keys (6.5 MB; bench/scale.py).
        self._levels: dict[float, float] = {}
        self._exhausted = False
        self.state = StudyState.RUNNING
        self.end_reason: str | None = None
        # How the launches were decided, by kind (see ``decisions``): counted since this Study
        # object was made, not restored.
        self._decisions: dict[str, int] = {}
        # One record per decision (launches, and PAUSE / STOP answers), until drained.
        self._decision_log: deque[DecisionRecord] = deque(maxlen=DECISION_LOG_MAX)
        # Bumped by every counted report and every launch: a model is stale only if it moved.
        self._version = 0
        self._fit_checked = -1
        # ``best`` as of a ``_version``: it moves only with a counted report or a launch, and
        # the status answers ask for it on every call (a walk of every trial at 10,000 trials).
        self._best_at: tuple[int, Best | None] | None = None
        # Each rung's counts, kept as the trials change (``show`` asks on every call).
        self._occupancy = Occupancy(spec)
        # Each trial's answer estimate and the best of them (a single objective), kept with
        # every change of a curve, so that best() walks no list of trials.
        self._answers = None if self.objective.is_multi else AnswerIndex(self.objective)
        if self._indexed is not None:
            self._indexed.attach(self)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def new(cls, spec: StudySpec) -> Study:
        return cls(spec, make_searcher(spec), make_scheduler(spec))

    @classmethod
    def restore(
        cls,
        spec: StudySpec,
        records: Sequence[TrialRecord],
        *,
        state: StudyState = StudyState.RUNNING,
        end_reason: str | None = None,
        live: Collection[int] = (),
        decisions: Mapping[str, int] | None = None,
    ) -> Study:
        """A study from its stored trials. ``live``: trials whose run is still going (the shell
        adopted its process after a restart): they stay running, and a PAUSE or STOP their run
        was answered (not a shutdown's) is still the decision that ends it. ``decisions``: the
        launch counts as stored (one record per decision), so ``decisions`` goes on from them."""
        study = cls.new(spec)
        study.state = state
        study.end_reason = end_reason
        if decisions:
            # The launch counts only: PAUSE and STOP answers are records, not launches.
            study._decisions = {
                k: int(n) for k, n in decisions.items() if n and k.endswith(_LAUNCH_KINDS)
            }
        for rec in sorted(records, key=lambda r: r.trial_id):
            if rec.trial_id != len(study._trials):
                raise BadState(f"trial records are not numbered 0..n-1 (found {rec.trial_id})")
            t = _Trial(
                trial_id=rec.trial_id,
                config=dict(rec.config),
                state=rec.state,
                bracket=rec.bracket,
                resume_from=rec.resume_from,
                max_resource=rec.max_resource,
                runs=rec.runs,
                curve={study._level(r): v for r, v in rec.curve},
                error=rec.error,
                reported_keys=set(rec.reported_keys),
                vectors={study._level(r): v for r, v in rec.vectors},
                retries=list(rec.retries),
            )
            t.restart = t.retry_unrun
            if rec.trial_id in live and rec.state is TrialState.RUNNING:
                if rec.last_decision is not Decision.CONTINUE and not rec.interrupting:
                    t.ending = rec.last_decision
            else:
                t.state = study._restored_state(t, rec)
            study._trials.append(t)
            study._in[t.state].add(t.trial_id)
            study._curved += bool(t.curve)
            study._curve_changed(t)
            study._occupancy.update(t)
        if study._indexed is not None:
            study._indexed.attach(study)
        if study._searcher.needs_history:
            # Made with the restore (before the daemon serves), not at the first decision:
            # 10,000 trials' observations were 79 ms of the loop there (bench/scale.py, dyhpo).
            study._observations()
        return study

    def _restored_state(self, t: _Trial, rec: TrialRecord) -> TrialState:
        if rec.state is TrialState.RUNNING:
            # Its daemon died before recording the exit (SIGKILL, power loss). The last answer the
            # run acknowledged says how that exit went: after a PAUSE or a STOP the trial saved
            # its checkpoint and left, as on_exit would have recorded. A shutdown's answer (a
            # PAUSE; a STOP from an hpod before issue 13), a CONTINUE or no report leave it
            # interrupted, as a clean shutdown would have: it is resumed.
            answer = rec.last_decision
            if answer in (Decision.PAUSE, Decision.STOP) and not rec.interrupting:
                return self._end(t, answer)
            return self._interrupted(t)
        if rec.state is TrialState.INTERRUPTED:
            return self._interrupted(t)
        return rec.state

    # -- the view schedulers read --------------------------------------------------------------

    @property
    def trials(self) -> Sequence[_Trial]:
        return self._trials

    def trial(self, trial_id: int) -> _Trial:
        """The study's own trial (read it, never change it); NotFound for an unknown one."""
        return self._get(trial_id)

    def record(self, trial_id: int) -> TrialRecord:
        return self._get(trial_id).record()

    def records(self) -> list[TrialRecord]:
        return [t.record() for t in self._trials]

    def records_in(self, state: TrialState) -> list[TrialRecord]:
        """The records of the trials in ``state``, by trial id (no walk of the others)."""
        return [self._trials[i].record() for i in sorted(self._in[state])]

    def _move(self, t: _Trial, new: TrialState) -> None:
        old = t.state
        t.move(new)
        self._occupancy.update(t)
        self._in[old].discard(t.trial_id)
        self._in[t.state].add(t.trial_id)

    def _curve_changed(self, t: _Trial, since: float | None = None) -> None:
        """``t``'s curve changed (``since``: only above that level): its answer estimate too."""
        if self._answers is not None:
            self._answers.update(t.trial_id, t.curve, since)

    def _touched(self, t: _Trial, since: float | None = None) -> None:
        self._occupancy.update(t)
        if self._indexed is not None:
            self._indexed.touched(t, since)

    def _get(self, trial_id: int) -> _Trial:
        if not 0 <= trial_id < len(self._trials):
            raise NotFound(f"study has no trial {trial_id}")
        return self._trials[trial_id]

    # -- slots ---------------------------------------------------------------------------------

    def _can_start_new(self) -> bool:
        if self._exhausted or self.state is not StudyState.RUNNING:
            return False
        limit = self.spec.limits.max_trials
        return limit is None or len(self._trials) < limit

    def next_launch(self, now: float) -> Launch | None:
        """What to run in a free slot, or None when nothing should start now."""
        if self.state is not StudyState.RUNNING:
            return None
        # Trials cut off by a daemon shutdown go first: they hold the oldest claims.
        waiting = self._in[TrialState.INTERRUPTED] | self._in[TrialState.PENDING]
        if waiting:
            t = self._trials[min(waiting)]
            return self._launch(t, fresh=(t.runs == 0 and not t.curve) or t.restart)
        while True:
            plan = self._scheduler.next(self, can_start_new=self._can_start_new())
            if plan is None:
                return None
            if isinstance(plan, Promote):
                t = self._get(plan.trial_id)
                if t.state is not TrialState.PAUSED:
                    raise BadState(f"scheduler promoted trial {t.trial_id}, which is {t.state}")
                t.max_resource = plan.max_resource
                self._count(f"{plan.how}_promotions", t.trial_id, plan.max_resource, now)
                return self._launch(t, fresh=False)
            assert isinstance(plan, NewTrial)
            how = plan.how
            config: Config | None = plan.config
            if config is None:
                history = self._observations() if self._searcher.needs_history else ()
                suggestion = self._searcher.suggest(len(self._trials), history)
                if suggestion is None:
                    # The searcher has nothing left (a finished grid); ask again for a promotion.
                    self._exhausted = True
                    continue
                config, how = suggestion.config, suggestion.how
            self._count(f"{how}_starts", len(self._trials), plan.max_resource, now)
            t = _Trial(
                trial_id=len(self._trials),
                config=config,
                state=TrialState.PENDING,
                bracket=plan.bracket,
                max_resource=plan.max_resource,
            )
            self._trials.append(t)
            self._in[t.state].add(t.trial_id)
            return self._launch(t, fresh=True)

    def _count(self, kind: str, trial_id: int, level: float, at: float) -> None:
        self._decisions[kind] = self._decisions.get(kind, 0) + 1
        self._decision_log.append(DecisionRecord(kind, trial_id, level, at))

    def drain_decisions(self) -> list[DecisionRecord]:
        """The decisions made since the last drain, oldest first (the shell stores them with
        the launch or the report they came with)."""
        if not self._decision_log:
            return []
        out = list(self._decision_log)
        self._decision_log.clear()
        return out

    @property
    def decisions(self) -> dict[str, int]:
        """Launches by how they were decided: ``asha_promotions``, ``model_promotions``,
        ``random_starts``, ``model_starts`` (a resumed interrupted trial is none of them)."""
        return dict(self._decisions)

    @property
    def modeled(self) -> bool:
        """Whether the searcher or the scheduler decides with a fitted model."""
        return self._modeled_scheduler is not None or self._modeled_searcher is not None

    def wants_fit(self) -> FitRequest | None:
        """A model to fit for the next decisions, or None (no model-based component, nothing new
        since the last request, or too little data). Cheap when nothing changed; the shell fits
        the request with :func:`hpod.core.models.fit` wherever it likes and hands the model back
        with :meth:`install`."""
        if self._version == self._fit_checked:
            return None
        self._fit_checked = self._version
        if self._modeled_scheduler is not None:
            req = self._modeled_scheduler.wants_fit(self)
            if req is not None:
                return req
        if self._modeled_searcher is not None:
            return self._modeled_searcher.wants_fit(self._observations())
        return None

    def install(self, request: FitRequest, model: Any) -> None:
        """Decide with ``model`` (``fit(request)``) from now on."""
        # The scheduler asks first in wants_fit; a request's owner says whose it is.
        component = (
            self._modeled_scheduler if request.owner is Owner.SCHEDULER else self._modeled_searcher
        )
        if component is not None:
            component.install(request, model)

    def _launch(self, t: _Trial, *, fresh: bool) -> Launch:
        self._version += 1
        self._move(t, TrialState.RUNNING)
        # A resumed trial starts from the highest level it reported: its checkpoint's level.
        t.resume_from = 0.0 if fresh else t.last_resource
        t.runs += 1
        t.ending = None
        t.stopped_by_shell = False
        self._touched(t)
        t.restart = False
        return Launch(t.trial_id, dict(t.config), t.resume_from, t.max_resource, fresh)

    def _observations(self) -> History:
        parts: list[TrialHistory] = []
        for t in self._trials:
            part = t.observed
            # A curve put back in order and a configuration an OOM retry changed are new dicts:
            # the part reads the ones it was made on.
            if (
                part is None
                or part.config is not t.config
                or part.curve is not t.curve
                or (part.vectors is not None and part.vectors is not t.vectors)
            ):
                part = t.observed = self._observed(t)
            parts.append(part)
        return History(parts)

    def _observed(self, t: _Trial) -> TrialHistory:
        # Its own configuration, not a copy: a trial's is never changed in place (_oom_retry).
        if self.objective.is_multi:
            return TrialHistory.of(t.config, t.curve, t.vectors, self.objective.minimized)
        return TrialHistory.of(t.config, t.curve)

    # -- reports and exits ---------------------------------------------------------------------

    def resource_of(self, trial_id: int, metrics: Mapping[str, Any]) -> float:
        """The resource level a report stands at: its resource key, else one past the last."""
        raw = metrics.get(self.objective.resource)
        if raw is None:
            return self._level(self._get(trial_id).last_resource + 1)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise InvalidParams(
                f"{self.objective.resource}={raw!r} is not a finite number; "
                f"report the resource (objective.resource) as a number"
            )
        return self._level(float(raw))

    def _level(self, resource: float) -> float:
        """The study's one float object for ``resource`` (see ``_levels``)."""
        return self._levels.setdefault(resource, resource)

    def on_report(
        self,
        trial_id: int,
        metrics: Mapping[str, Any],
        now: float,
        *,
        force: Decision | None = None,
    ) -> ReportOutcome:
        """Count a report and answer it. ``force`` answers without asking the scheduler (a limit
        was reached, the study is stopping, the daemon is shutting down)."""
        t = self._get(trial_id)
        if t.state is not TrialState.RUNNING:
            raise BadState(
                f"trial {trial_id} is {t.state.value}, not running; its report is refused"
            )
        resource = self.resource_of(trial_id, metrics)
        keys = t.reported_keys
        new_keys = _NO_KEYS if keys.issuperset(metrics) else frozenset(metrics.keys() - keys)
        keys.update(metrics)
        if t.ending is not None:
            # Reports past a PAUSE or STOP are kept in the store but not ranked: the trial should
            # have stopped, and will be made to.
            return ReportOutcome(t.ending, resource, counted=False, undo=_Undo(new_keys))
        if resource <= t.resume_from:
            # A resumed trial that had to start over re-reports levels already counted.
            return ReportOutcome(
                force or Decision.CONTINUE,
                resource,
                counted=False,
                forced=force is not None,
                undo=_Undo(new_keys),
            )
        raw = metrics.get(self.objective.metric)
        vector: tuple[float, ...] | None = None
        if self.objective.is_multi:
            # A report that carries any of the metrics is counted and judged; the ones it leaves
            # out are NaN there (worst), as a non-number is.
            vector = tuple(_number(metrics.get(name)) for name in self.objective.names)
            if raw is None and any(name in metrics for name in self.objective.names):
                raw = math.nan
        if raw is None:
            undo = _Undo(new_keys)
        else:
            value = (
                float(raw)
                if isinstance(raw, (int, float)) and not isinstance(raw, bool)
                else math.nan
            )
            last = next(reversed(t.curve), None)
            out_of_order = last is not None and resource < last
            undo = _Undo(new_keys, True, t.curve.get(resource))
            self._curved += last is None
            t.curve[resource] = value
            if vector is not None:
                undo = undo._replace(before_vector=t.vectors.get(resource))
                t.vectors[resource] = vector
                if out_of_order:
                    t.vectors = dict(sorted(t.vectors.items()))
            self._version += 1
            if out_of_order:
                # Keep the curve in resource order; reports nearly always arrive in order.
                t.curve = dict(sorted(t.curve.items()))
            # Above its last level: what it had up to there stands (an index keeps it).
            since = last if last is not None and resource > last else None
            self._curve_changed(t, since)
            self._touched(t, since)
        if force is not None:
            return ReportOutcome(force, resource, counted=True, forced=True, undo=undo)
        # Only a report that carries the objective is judged: one without it (a misspelt name, a
        # metric reported between validations) leaves nothing to rank at a rung it crosses, and
        # the next one that carries it is judged at that rung.
        decision = (
            Decision.CONTINUE if raw is None else self._scheduler.on_report(self, t, resource)
        )
        if decision is Decision.CONTINUE and resource >= t.max_resource:
            # Never let a trial run past what it was launched for, whatever the scheduler says.
            decision = self._end_of_run(t)
        if decision is not Decision.CONTINUE:
            t.ending = decision
            self._decision_log.append(
                DecisionRecord(decision.value.lower(), trial_id, resource, now)
            )
        return ReportOutcome(decision, resource, counted=True, undo=undo)

    def retract_report(self, trial_id: int, outcome: ReportOutcome) -> None:
        """Take back a report :meth:`on_report` took (``outcome`` is its answer) that the shell
        could not store: its commit failed, and the trial was answered with an error.

        Why not decide first and count only once stored: the answer is sent from the store's
        writer thread right after the commit (``hpod.daemon.answers``), so counting after it
        would cost every report a wake-up of the loop, and every report meanwhile would be
        decided on curves without the ones still in flight. A commit fails only when the store
        cannot write (a full disk), so that rare path pays instead: what the report changed is
        put back, and the trial holds what a restart would rebuild from the store (its curve,
        its metric names, no PAUSE or STOP pending). The decisions other trials were answered
        meanwhile stand, as they do in the store. The scheduler forgets what it derived from the
        point; a model fitted on it meanwhile guides choices until the next fit replaces it."""
        undo = outcome.undo
        if undo is None:
            raise BadState(f"trial {trial_id}: only an outcome of on_report can be retracted")
        t = self._get(trial_id)
        t.reported_keys.difference_update(undo.new_keys)
        if undo.point:
            if undo.before is None:
                t.curve.pop(outcome.resource, None)
                self._curved -= not t.curve
            else:
                t.curve[outcome.resource] = undo.before
            if undo.before_vector is None:
                t.vectors.pop(outcome.resource, None)
            else:
                t.vectors[outcome.resource] = undo.before_vector
            self._version += 1
            self._curve_changed(t)
            self._touched(t)
            if self._modeled_scheduler is not None:
                self._modeled_scheduler.forget(trial_id, outcome.resource)
        decided = outcome.decision is not Decision.CONTINUE and not outcome.forced
        if decided and outcome.counted and t.state is TrialState.RUNNING:
            # The PAUSE or STOP it was answered never reached the trial. (A trial that has
            # exited since has had its state recorded from it, in the store too.)
            t.ending = None

    def _end_of_run(self, t: _Trial) -> Decision:
        return (
            Decision.STOP if t.max_resource >= self.spec.scheduler.max_resource else Decision.PAUSE
        )

    def mark_stopping(self, trial_id: int) -> None:
        """The shell is stopping this trial's process itself (a limit or the user)."""
        self._get(trial_id).stopped_by_shell = True

    def on_exit(
        self,
        trial_id: int,
        returncode: int,
        now: float,
        error: str | None = None,
        *,
        oom: bool = False,
    ) -> TrialState:
        """Record how a trial's process ended; returns its new state. ``oom``: it ran out of
        memory (it said so, its stderr shows it, or the kernel's OOM killer ended it): the
        study's [oom] policy retries it with a halved batch (PENDING, not FAILED) while it may."""
        t = self._get(trial_id)
        if t.state is not TrialState.RUNNING:
            raise BadState(f"trial {trial_id} is {t.state.value}; it has no process to exit")
        if t.ending is not None:
            new = self._end(t, t.ending)
        elif t.stopped_by_shell:
            new = TrialState.STOPPED
        elif returncode == 0 and not oom:
            new = TrialState.COMPLETED if self._measured(t) else self._unmeasured(t)
        else:
            # An exit 0 counts as out of memory too when the trial said it ran out (trial.oom,
            # hpopt's reportOOM) and then left cleanly.
            text = error or (
                f"exited with status {returncode}"
                if returncode != 0
                else "reported out of memory (trial.oom), then exited with status 0"
            )
            retry = self._oom_retry(t, text, now) if oom else None
            if retry is None:
                new = TrialState.FAILED
                t.error = text + (self._no_retry(t) if oom else "")
            else:
                new = retry
        self._move(t, new)
        t.ending = None
        self._touched(t)
        self._check_hopeless()
        return new

    def _oom_retry(self, t: _Trial, error: str, now: float) -> TrialState | None:
        """PENDING with the batch key halved, when the [oom] policy allows another retry; None
        when it does not (no batch key, retries spent, already at the floor)."""
        policy = self.spec.oom
        key = policy.batch_size_key
        if key is None or len(t.retries) >= policy.max_retries:
            return None
        value = t.config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        before = int(value)
        after = self._halved(key, before)
        if after is None:
            return None
        t.retries.append(OomRetry(t.runs, key, before, after, now, error))
        # A new dict, not the old one changed: the history's part and whatever a searcher kept
        # of it read the configuration the trial ran with.
        t.config = {**t.config, key: after}
        t.restart = True
        t.error = None
        self._version += 1
        return TrialState.PENDING

    def _halved(self, key: str, before: int) -> int | None:
        """The batch key's value for a retry: half of ``before`` (floor division), never under
        [oom] min_value; for a choice parameter, the largest of its choices at or under half
        (else the largest under ``before``), so that the retried configuration stays one of
        the space's. None: nothing smaller is allowed."""
        floor = self.spec.oom.min_value
        param = self.spec.space[key]  # the spec holds it to a parameter of the space
        if param.type is ParamType.CHOICE:
            smaller = sorted(
                int(c) for c in param.choices if is_number(c) and floor <= int(c) < before
            )
            if not smaller:
                return None
            halves = [c for c in smaller if c <= before // 2]
            return halves[-1] if halves else smaller[-1]
        if before <= floor:
            return None
        return max(floor, before // 2)

    def _no_retry(self, t: _Trial) -> str:
        """Why an out-of-memory exit was not retried, for the trial's error."""
        policy = self.spec.oom
        key = policy.batch_size_key
        if key is None:
            return "; out of memory, and [oom] batch_size_key is not set, so it is not retried"
        if len(t.retries) >= policy.max_retries:
            return f"; out of memory after {len(t.retries)} retries ([oom] max_retries)"
        return (
            f"; out of memory with {key} = {t.config.get(key)!r}, and nothing smaller to retry "
            f"with ([oom] min_value = {policy.min_value}, or the smallest of its choices)"
        )

    def _end(self, t: _Trial, decision: Decision) -> TrialState:
        """The state a run ended by ``decision`` (PAUSE or STOP) leaves its trial in."""
        if not self._measured(t):
            # Its reports reached its launch's level without the objective: paused, it would
            # never be promoted nor ranked; it is the trial's code that is wrong.
            return self._unmeasured(t)
        return TrialState.PAUSED if decision is Decision.PAUSE else self._finished_state(t)

    def _measured(self, t: _Trial) -> bool:
        """Whether any report of the trial carried the objective metric (any of them)."""
        return bool(t.curve) or any(n in t.reported_keys for n in self.objective.names)

    def _unmeasured(self, t: _Trial) -> TrialState:
        """Fail a trial that ended by itself without reporting the objective, saying what it did
        report. (One the shell stopped first, a limit's or the user's, is only stopped.)"""
        resource, names = self.objective.resource, self.objective.names
        if t.reported_keys:
            wanted = " or ".join(repr(n) for n in names)
            key = "objective.metrics" if self.objective.is_multi else "objective.metric"
            t.error = (
                f"exited without reporting {wanted}; it reported: "
                f"{', '.join(sorted(t.reported_keys))} "
                f"(check {key} or the trial's report call)"
            )
        else:
            t.error = (
                "exited without reporting anything; report with "
                f"hpod.trial.report({resource}=..., {', '.join(f'{n}=...' for n in names)})"
            )
        return TrialState.FAILED

    def _finished_state(self, t: _Trial) -> TrialState:
        done = t.last_resource >= self.spec.scheduler.max_resource
        return TrialState.COMPLETED if done else TrialState.STOPPED

    def _interrupted(self, t: _Trial) -> TrialState:
        """The state of a trial whose run a shutdown cut off before any PAUSE or STOP."""
        if t.curve and t.last_resource >= t.max_resource:
            # It had counted its launch's level (a shutdown's PAUSE answered the report there):
            # nothing is left of the run, so it ends as the study would have ended it, paused at
            # its rung or finished. Relaunched to "resume", it would run from that level to that
            # level, report nothing and come back completed at a rung, never promoted.
            return self._end(t, self._end_of_run(t))
        return TrialState.INTERRUPTED

    def on_start_failed(self, trial_id: int, error: str) -> None:
        """The process could not even be started (bad command, missing workdir)."""
        t = self._get(trial_id)
        t.error = error
        self._move(t, TrialState.FAILED)
        self._touched(t)
        self._check_hopeless()

    def on_interrupted(self, trial_id: int, *, ran: bool = True) -> None:
        """The daemon shut down under this trial: it runs again at the next start. ``ran``
        False: its last launch never reached a process or a job, so it is not counted as a run
        (the next launch takes its number)."""
        t = self._get(trial_id)
        if not ran and t.runs > 0:
            t.runs -= 1
            t.restart = t.retry_unrun
        self._move(t, self._interrupted(t) if t.ending is None else self._end(t, t.ending))
        t.ending = None
        self._touched(t)

    def _check_hopeless(self) -> None:
        failed = len(self._in[TrialState.FAILED])
        counted = self._curved > 0
        if failed >= FAILURES_BEFORE_GIVING_UP and not counted and self.state is StudyState.RUNNING:
            last = self._trials[max(self._in[TrialState.FAILED])]
            self.end(
                StudyState.FAILED,
                f"the first {failed} trials failed without one counted report "
                f"(last: {last.error}); check the command with `hpodctl logs`",
            )

    # -- the study as a whole -------------------------------------------------------------------

    @property
    def running(self) -> list[int]:
        return sorted(self._in[TrialState.RUNNING])

    @property
    def finished(self) -> bool:
        """True when nothing runs and nothing more will: the shell may mark it ended."""
        if self._in[TrialState.RUNNING]:
            return False
        if self.state is not StudyState.RUNNING:
            return True
        if self._in[TrialState.INTERRUPTED] or self._in[TrialState.PENDING]:
            return False
        if self._can_start_new():
            # Every scheduler starts a new trial when it may; asking a model-based one to plan
            # would only spend a scoring round.
            return False
        return self._scheduler.next(self, can_start_new=self._can_start_new()) is None

    def conclude(self, reason: str | None = None) -> None:
        """Once ``finished``: a running study ends completed, unless every trial failed or none
        measured anything."""
        if self.state is not StudyState.RUNNING:
            return
        failed = [t for t in self._trials if t.state is TrialState.FAILED]
        if failed and len(failed) == len(self._trials):
            self.end(
                StudyState.FAILED,
                f"all {len(failed)} trials failed (last: {failed[-1].error}); "
                "check the command with `hpodctl show` and `hpodctl logs`",
            )
        elif not any(t.curve for t in self._trials):
            # Trials stopped (a limit, the user) or failed before one measurement: no best to hand
            # over, so the study did not complete its search.
            last = next((f" (last failure: {t.error})" for t in reversed(failed) if t.error), "")
            self.end(
                StudyState.FAILED,
                f"no trial reported {' or '.join(repr(n) for n in self.objective.names)} "
                f"({'objective.metrics' if self.objective.is_multi else 'objective.metric'}): "
                "nothing was "
                f"measured{last}; check the trials with `hpodctl show` and `hpodctl logs`",
            )
        else:
            self.end(StudyState.COMPLETED, reason or "the search is done: no trial left to run")

    def end(self, state: StudyState, reason: str) -> None:
        """Stop launching; running trials are the shell's to stop (it calls mark_stopping)."""
        if self.state is state:
            return
        self.state = self.state.check(state)
        self.end_reason = reason

    def interrupt(self) -> None:
        if self.state is StudyState.RUNNING:
            self.state = self.state.check(StudyState.INTERRUPTED)

    def resume(self) -> None:
        if self.state is StudyState.INTERRUPTED:
            self.state = self.state.check(StudyState.RUNNING)

    def counts(self) -> dict[str, int]:
        return {st.value: len(self._in[st]) for st in TrialState}

    def rung_occupancy(self) -> list[dict[str, Any]]:
        """Each rung's trials (reached, running toward it, paused at it, promoted past it),
        kept as each trial reports, moves or is promoted (:class:`Occupancy`)."""
        return self._occupancy.view()

    def value_of(self, trial_id: int) -> float:
        """The value a trial ranks by for the answer, its estimate (:mod:`hpod.core.answer`;
        NaN: no counted report). Multi-objective: its first metric's; see vector_of."""
        t = self._get(trial_id)
        if self._answers is None:
            return self.vector_of(trial_id)[0] if t.vectors else math.nan
        est = self._answers.get(trial_id)
        return math.nan if est is None else est.value

    def answer_of(self, trial_id: int) -> Estimate | None:
        """A trial's answer estimate: the value it ranks by, its last counted report and how
        many reports the value averages; None: no counted report. Multi-objective: its first
        metric's (vector_of), the value and the last alike."""
        t = self._get(trial_id)
        if self._answers is None:
            if not t.vectors:
                return None
            first = self.vector_of(trial_id)[0]
            return Estimate(first, next(reversed(t.vectors.values()))[0], 1)
        return self._answers.get(trial_id)

    def vector_of(self, trial_id: int) -> tuple[float, ...]:
        """Multi-objective: the values a trial ranks by, one per metric (objective.names
        order): over its counted reports, the last for min/max, the best for ``*_global``."""
        t = self._get(trial_id)
        if not self.objective.is_multi:
            return (self.value_of(trial_id),)
        if not t.vectors:
            return tuple(math.nan for _ in self.objective.names)
        return self.objective.summary_vector(list(t.vectors.values()))

    def pareto(self) -> list[Best]:
        """Every trial with a counted report, ranked: by Pareto front, then crowding distance
        (larger first), then trial id (:mod:`hpod.core.pareto`); a single objective ranks as
        :meth:`best` does. Trials with no finite value at all are left out."""
        if not self.objective.is_multi:
            one = self.best()
            return [] if one is None else [one]
        rows = [t for t in self._trials if t.vectors]
        vectors = [self.vector_of(t.trial_id) for t in rows]
        points = [self.objective.minimized(v) for v in vectors]
        keep = [i for i, p in enumerate(points) if not all(math.isinf(x) for x in p)]
        rows = [rows[i] for i in keep]
        vectors = [vectors[i] for i in keep]
        points = [points[i] for i in keep]
        out = []
        for i in pareto_order(points, [t.trial_id for t in rows]):
            t = rows[i]
            names = self.objective.names
            last = next(reversed(t.vectors.values()))[0]
            out.append(
                Best(
                    t.trial_id,
                    dict(t.config),
                    vectors[i][0],
                    t.last_resource,
                    vectors[i],
                    names,
                    last=last,
                )
            )
        return out

    def front(self) -> list[Best]:
        """The Pareto front (multi-objective ``best``): the non-dominated trials, ranked by
        crowding distance (larger first), then trial id. A single objective: ``[best()]``."""
        if not self.objective.is_multi:
            return self.pareto()
        ranked = self.pareto()
        points = [self.objective.minimized(b.values) for b in ranked]
        first = set(non_dominated_sort(points)[0]) if points else set()
        return [b for i, b in enumerate(ranked) if i in first]

    def best_key(self) -> Key | None:
        """Where the best trial stands (:func:`hpod.core.answer.rank_key`: its estimate's sort
        key, minus its level, its id), in O(log n) amortized; None with no finite estimate or
        with several objectives (their answer is a front, not a key)."""
        return None if self._answers is None else self._answers.best_key()

    def top(self, k: int) -> list[int]:
        """The ids of the ``k`` trials the answer ranks first (best first; only those with a
        finite estimate). A single objective's only: several have a front (:meth:`pareto`)."""
        if self._answers is None:
            raise ValueError("several objectives are ranked by Pareto front: use pareto()")
        return [key[2] for key in self._answers.top(k)]

    def best(self) -> Best | None:
        """The trial with the best estimate (:meth:`find_best`), found again only after a counted
        report or a launch moved the study."""
        if self._best_at is None or self._best_at[0] != self._version:
            self._best_at = (self._version, self.find_best())
        return self._best_at[1]

    def find_best(self) -> Best | None:
        """The trial with the best estimate (ties: the one that went further, then the older).

        Every trial with a counted report is a candidate, ranked by its estimate where it got to
        (:mod:`hpod.core.answer`: the mean of its last few counted reports, or its best one for
        ``*_global``; ``docs/answer.md``), as Syne Tune and Ray Tune rank by the trial's result
        where it got to: a trial paused or stopped at a lower rung is handed over only when its
        value there beats every trial that went further, a handicap on curves that improve with
        the resource.
        Ranking the trials that reached ``max_resource`` first (Optuna's ``best_trial``, completed
        trials only) was measured and not chosen: on the built-in benchmarks it answered worse in
        32 of 45 cases and better in 2 (``docs/schedulers.md``, "Which trial is the best")."""
        if self.objective.is_multi:
            # The first trial of the front (the one on it with the most room around it).
            front = self.front()
            return front[0] if front else None
        assert self._answers is not None
        trial_id = self._answers.best()
        if trial_id is None:
            return None
        t = self._trials[trial_id]
        est = self._answers.get(trial_id)
        assert est is not None
        return Best(
            t.trial_id,
            dict(t.config),
            est.value,
            t.last_resource,
            last=est.last,
            window=est.window,
        )


def _number(raw: Any) -> float:
    """A reported metric as a float: NaN for one missing or not a number."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    return math.nan


# -- composition: the one place that knows every scheduler and searcher --------------------------


def make_scheduler(spec: StudySpec) -> Scheduler:
    """The scheduler a study spec asks for."""
    s = spec.scheduler
    kind = s.type
    if kind is SchedulerType.FIFO:
        return FifoScheduler(s.max_resource)
    if kind in (SchedulerType.ASHA, SchedulerType.HYPERBAND):
        brackets = min(s.brackets, max_brackets(s)) if kind is SchedulerType.HYPERBAND else 1
        return RungScheduler(
            rung_levels(s),
            s.max_resource,
            s.reduction_factor,
            promotion=s.rung_type is RungType.PROMOTION,
            brackets=brackets,
            adaptive=s.adaptive_brackets and brackets > 1,
        )
    if kind is SchedulerType.MEDIAN:
        return MedianStoppingScheduler(s.max_resource, s.grace_period, s.min_trials)
    assert kind is SchedulerType.DYHPO
    # Imported here: the model-based parts need scipy, 28 MB of a daemon whose studies may
    # never use a model.
    from hpod.core.dyhpo import DyHPOScheduler

    return DyHPOScheduler(
        spec.space,
        rung_levels(s),
        s.max_resource,
        s.reduction_factor,
        probability_sh=s.probability_sh,
        seed=spec.searcher.seed,
        maximize=spec.objective.maximize,
        min_points=spec.searcher.num_init_trials,
        options=s.options,
        objective=spec.objective,
    )


def make_searcher(spec: StudySpec) -> Searcher:
    """The searcher a study spec asks for."""
    s = spec.searcher
    if s.type is SearcherType.GRID:
        return GridSearcher(spec.space, s.grid_points, s.points_to_evaluate)
    if s.type is SearcherType.BO:
        from hpod.core.bo import BOSearcher

        return BOSearcher(
            spec.space,
            s.seed,
            s.points_to_evaluate,
            maximize=spec.objective.maximize,
            num_init_trials=s.num_init_trials,
            acquisition=s.acquisition,
            kappa=s.kappa,
            kappa_decay=s.kappa_decay,
            kappa_decay_delay=s.kappa_decay_delay,
            scalarize=spec.objective.is_multi,
            random_fraction=s.random_fraction,
        )
    if s.type is SearcherType.DYHPO:
        # The DyHPO scheduler picks its new configurations itself and hands them over with its
        # plan; this one stands in while it has no model, and when no candidate of the model's
        # was new. Never a configuration an earlier trial has.
        return DistinctSearcher(spec.space, s.seed, s.points_to_evaluate)
    return RandomSearcher(spec.space, s.seed, s.points_to_evaluate)
