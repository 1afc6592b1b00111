"""What a study and its deciding parts say to each other: the views, the plans, the protocols.

A scheduler answers a report (continue, pause or stop) and fills a free slot (what runs next); a
searcher says which configuration trial number ``n`` gets. :mod:`hpod.core.study` composes one of
each; the implementations (:mod:`~hpod.core.schedulers`, :mod:`~hpod.core.asha`,
:mod:`~hpod.core.median`, :mod:`~hpod.core.dyhpo`, :mod:`~hpod.core.searchers`,
:mod:`~hpod.core.bo`) import this module, and it imports none of them.

A scheduler keeps no state of its own that the trials do not already hold: everything it needs
(rung results, who was promoted) is derived from the :class:`StudyView` it is handed. That is what
lets a study restored from the store after a restart make exactly the decisions it would have made.

A searcher is a pure function of (its settings, the trial number, the history): a study restored
from the store after a restart asks again for trial ``n`` and gets the same configuration, so a
trial that was pending when the daemon died is not silently replaced by a different one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hpod.core.models import FitRequest, Modeled
from hpod.core.states import Decision, TrialState

if TYPE_CHECKING:
    from hpod.core.objective import Objective
    from hpod.core.space import Config, ParamValue


class TrialView(Protocol):
    """What a scheduler may read of a trial."""

    @property
    def trial_id(self) -> int: ...
    @property
    def state(self) -> TrialState: ...
    @property
    def bracket(self) -> int: ...
    @property
    def resume_from(self) -> float: ...
    @property
    def max_resource(self) -> float: ...
    @property
    def config(self) -> Config: ...
    @property
    def curve(self) -> Mapping[float, float]:
        """Counted objective values by resource level, in increasing resource order."""
        ...

    @property
    def vectors(self) -> Mapping[float, Sequence[float]]:
        """Multi-objective: every metric's counted value (objective.names order) by level, in
        increasing resource order; empty for a single objective."""
        ...

    @property
    def last_resource(self) -> float: ...


class StudyView(Protocol):
    """What a scheduler may read of the study."""

    @property
    def objective(self) -> Objective: ...
    @property
    def trials(self) -> Sequence[TrialView]: ...


@dataclass(frozen=True)
class NewTrial:
    """Start a new configuration, to run up to ``max_resource`` (its first rung).

    ``config``: the configuration, when the scheduler chose it (DyHPO); None asks the searcher.
    ``how``: how it was chosen, for the study's decision counts ("random", "model")."""

    max_resource: float
    bracket: int = 0
    config: Config | None = None
    how: str = "random"


@dataclass(frozen=True)
class Promote:
    """Resume a paused trial from where it paused, up to ``max_resource`` (its next rung).

    ``how``: by the rung rule ("asha") or by a model's score ("model")."""

    trial_id: int
    max_resource: float
    how: str = "asha"


Plan = NewTrial | Promote


class Scheduler(Protocol):
    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        """Called after ``trial``'s report at ``resource`` was counted into its curve."""
        ...

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        """What to run in a free slot; None when nothing should start now."""
        ...


@runtime_checkable
class ModeledScheduler(Scheduler, Modeled, Protocol):
    """A scheduler that decides with a fitted model (DyHPO)."""

    def wants_fit(self, study: StudyView) -> FitRequest | None:
        """A model to fit from the study as it is now, or None (nothing new, too little data)."""
        ...

    def forget(self, trial_id: int, resource: float) -> None:
        """Drop what it derived from ``trial_id``'s curve at ``resource`` and above: the point
        there was taken back (``Study.retract_report``), so a cache of it is stale."""
        ...


@runtime_checkable
class IndexedScheduler(Scheduler, Protocol):
    """A scheduler that keeps its own index of the study's trials (the rung schedulers' ranks),
    so that a decision does not walk every trial. The index is derived state only: the study
    hands it every trial at :meth:`attach` (a new or restored study) and each trial again after
    anything a decision reads of it changed (:meth:`touched`), so it always equals what the
    trials say and a restored study decides the same."""

    def attach(self, study: StudyView) -> None:
        """Index ``study``'s trials as they are now; later decisions on it use the index."""
        ...

    def touched(self, trial: TrialView, since: float | None = None) -> None:
        """``trial`` changed: its state, its launch, or its curve. ``since``: only points above
        this level were added (an in-order report: what it had up to there is as it was);
        None: anything may have changed."""
        ...


def ranking_value(objective: Objective, trial: TrialView, upto: float | None = None) -> float:
    """The value a trial ranks by, over its counted reports up to ``upto`` (all when None)."""
    values = [v for r, v in trial.curve.items() if upto is None or r <= upto]
    return objective.summary(values)


@dataclass(frozen=True, slots=True)
class Observation:
    """One reported objective value of one configuration at one resource level.

    ``resource`` 0 with a NaN ``value`` only says that the configuration was launched and has
    reported nothing yet: a model-based searcher counts it as pending."""

    config: Mapping[str, ParamValue]
    resource: float
    value: float
    # A multi-objective study's values there, one per metric, as losses (smaller is better;
    # Objective.minimized), for a searcher that scalarizes them; None for a single objective.
    vector: tuple[float, ...] | None = None
    # config_key(config), where the maker had it (the study makes it once a trial): a searcher
    # that dedupes the history reads it instead of making it again (observed_key).
    key: tuple[tuple[str, str, object], ...] | None = field(default=None, compare=False)


def observed_key(obs: Observation) -> tuple[tuple[str, str, object], ...]:
    """``config_key`` of an observation's configuration, made once by its study."""
    return obs.key if obs.key is not None else config_key(obs.config)


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A searcher's configuration for one trial, and how it was chosen, for the study's decision
    counts ("random", "model")."""

    config: Config
    how: str = "random"


class Searcher(Protocol):
    # A searcher with ``needs_history`` False is handed an empty history: building it walks
    # every report of the study, 40 ms on the event loop at 16,000 reports.
    @property
    def needs_history(self) -> bool: ...

    def suggest(self, number: int, history: Sequence[Observation]) -> Suggestion | None:
        """The configuration of trial ``number`` (0-based), or None when the search is over."""
        ...


@runtime_checkable
class ModeledSearcher(Searcher, Modeled, Protocol):
    """A searcher that decides with a fitted model (BO)."""

    def wants_fit(self, history: Sequence[Observation]) -> FitRequest | None:
        """A model to fit from the history, or None (nothing new, too little data)."""
        ...


def config_key(config: Mapping[str, ParamValue]) -> tuple[tuple[str, str, object], ...]:
    """A hashable key that is equal for the same point (64 and 64.0 alike, as the grid
    searcher's ``_same`` in :mod:`hpod.core.searchers`)."""
    out: list[tuple[str, str, object]] = []
    for key in sorted(config):
        v = config[key]
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append((key, "n", float(v)))
        else:
            out.append((key, type(v).__name__, v))
    return tuple(out)
