"""Trial and study states, with every allowed transition written down and checked."""

from __future__ import annotations

import enum

from hpod.errors import BadState


class TrialState(enum.StrEnum):
    PENDING = "pending"  # created, waiting for a slot
    RUNNING = "running"  # a process is (or is being) started for it
    PAUSED = "paused"  # stopped at a rung with its checkpoint; may be resumed
    COMPLETED = "completed"  # reached the study's max_resource, or ended by itself
    STOPPED = "stopped"  # ended early by the scheduler, a limit, or the user
    FAILED = "failed"  # the process exited non-zero without being told to stop
    INTERRUPTED = "interrupted"  # the daemon shut down under it; resumed on the next start

    @property
    def is_final(self) -> bool:
        return self in _FINAL_TRIAL

    @property
    def is_active(self) -> bool:
        """Holds, or is about to hold, a slot."""
        return self is TrialState.RUNNING

    def can_become(self, new: TrialState) -> bool:
        return new in _TRIAL_TRANSITIONS[self]

    def check(self, new: TrialState, *, what: str = "trial") -> TrialState:
        if not self.can_become(new):
            raise BadState(f"{what} cannot go from {self.value} to {new.value}")
        return new


_FINAL_TRIAL = frozenset({TrialState.COMPLETED, TrialState.STOPPED, TrialState.FAILED})

_TRIAL_TRANSITIONS: dict[TrialState, frozenset[TrialState]] = {
    TrialState.PENDING: frozenset({TrialState.RUNNING, TrialState.STOPPED}),
    TrialState.RUNNING: frozenset(
        {
            TrialState.PAUSED,
            TrialState.COMPLETED,
            TrialState.STOPPED,
            TrialState.FAILED,
            TrialState.INTERRUPTED,
            # An OOM retry or a resumable crash goes back to the queue.
            TrialState.PENDING,
        }
    ),
    TrialState.PAUSED: frozenset({TrialState.RUNNING, TrialState.STOPPED, TrialState.COMPLETED}),
    TrialState.INTERRUPTED: frozenset({TrialState.RUNNING, TrialState.STOPPED, TrialState.PENDING}),
    TrialState.COMPLETED: frozenset(),
    TrialState.STOPPED: frozenset(),
    TrialState.FAILED: frozenset(),
}


class StudyState(enum.StrEnum):
    RUNNING = "running"  # the daemon launches its trials
    COMPLETED = "completed"  # the search ended by itself or reached a limit
    STOPPED = "stopped"  # a user stopped it
    FAILED = "failed"  # it could not go on (every trial failing, a spec that cannot run)
    INTERRUPTED = "interrupted"  # the daemon shut down; it goes on at the next start

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STUDY

    def can_become(self, new: StudyState) -> bool:
        return new in _STUDY_TRANSITIONS[self]

    def check(self, new: StudyState) -> StudyState:
        if not self.can_become(new):
            raise BadState(f"study cannot go from {self.value} to {new.value}")
        return new


_FINAL_STUDY = frozenset({StudyState.COMPLETED, StudyState.STOPPED, StudyState.FAILED})

_STUDY_TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    StudyState.RUNNING: frozenset(
        {StudyState.COMPLETED, StudyState.STOPPED, StudyState.FAILED, StudyState.INTERRUPTED}
    ),
    StudyState.INTERRUPTED: frozenset({StudyState.RUNNING, StudyState.STOPPED}),
    StudyState.COMPLETED: frozenset(),
    StudyState.STOPPED: frozenset(),
    StudyState.FAILED: frozenset(),
}


class Decision(enum.StrEnum):
    """The answer to a trial's report."""

    CONTINUE = "CONTINUE"
    PAUSE = "PAUSE"  # save a checkpoint and exit; it may be resumed later
    STOP = "STOP"  # save a checkpoint (for the record) and exit; it will not be resumed
