"""ASHA and asynchronous Hyperband: one rung scheduler, with one bracket or several.

Promotion type (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning",
Algorithm 2): a trial runs to its bracket's first rung and pauses there with its checkpoint. When a
slot frees, the rungs are searched from the highest down for a paused trial among the best
``promotion_quota(n, eta)`` of the n trials at its rung (see :mod:`hpod.core.rungs`); the first
found is resumed up to the next rung (or ``max_resource`` from the top rung). With none, a new
configuration starts at the first rung of the bracket :func:`~hpod.core.rungs.pick_bracket` picks.

Stopping type: a trial is launched to ``max_resource`` and, each time a report carries it past a
rung, goes on only if it ranks among the best ``continue_quota(n, eta)`` = ``max(1, floor(n/eta))``
of the n trials that have reached that rung so far (itself included); otherwise it is stopped.

No private state: a trial's rung results are its counted curve, and "promoted past a rung" is its
``max_resource`` above the rung, so a study rebuilt from the store decides the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpod.core.plans import NewTrial, Plan, Promote, StudyView, TrialView
from hpod.core.rungs import (
    bracket_levels,
    bracket_weights,
    continue_quota,
    pick_bracket,
    promotion_quota,
    ranked,
)
from hpod.core.states import Decision, TrialState


class RungScheduler:
    """ASHA (``brackets = 1``) or asynchronous Hyperband (``brackets > 1``)."""

    def __init__(
        self,
        levels: Sequence[float],
        max_resource: float,
        eta: float,
        *,
        promotion: bool = True,
        brackets: int = 1,
    ) -> None:
        if brackets < 1 or brackets > len(levels) + 1:
            raise ValueError(f"brackets must be in 1..{len(levels) + 1}, got {brackets}")
        self.levels = tuple(float(v) for v in levels)
        self.max_resource = float(max_resource)
        self.eta = eta
        self.promotion = promotion
        self.brackets = brackets
        self.weights = bracket_weights(len(self.levels), brackets, eta)

    def rungs_of(self, bracket: int) -> tuple[float, ...]:
        """The bracket's rung levels followed by ``max_resource``."""
        return (*bracket_levels(self.levels, bracket), self.max_resource)

    # -- reports ------------------------------------------------------------------------------

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        if self.promotion:
            # The study pauses the trial at its launch's max_resource (its rung): nothing to add.
            return Decision.CONTINUE
        earlier = [r for r in trial.curve if r < resource]
        before = max(earlier, default=trial.resume_from)
        rungs = self.rungs_of(trial.bracket)[:-1]
        peers = [t for t in study.trials if t.bracket == trial.bracket]
        for level in rungs:
            if not before < level <= resource:
                continue
            order = ranked(study.objective, peers, level)
            rank = next(i for i, t in enumerate(order) if t.trial_id == trial.trial_id)
            if rank >= continue_quota(len(order), self.eta):
                return Decision.STOP
        return Decision.CONTINUE

    # -- free slots ---------------------------------------------------------------------------

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        if self.promotion:
            plan = self._promotion(study, final=not can_start_new)
            if plan is not None:
                return plan
        if not can_start_new:
            return None
        counts = [0] * self.brackets
        for t in study.trials:
            if 0 <= t.bracket < self.brackets:
                counts[t.bracket] += 1
        bracket = pick_bracket(counts, self.weights)
        first = self.rungs_of(bracket)[0] if self.promotion else self.max_resource
        return NewTrial(max_resource=first, bracket=bracket)

    def _promotion(self, study: StudyView, *, final: bool) -> Promote | None:
        # Every (level, bracket) rung, highest level first: the trials nearest the top go first.
        rungs = sorted(
            (
                (level, b, k)
                for b in range(self.brackets)
                for k, level in enumerate(self.rungs_of(b)[:-1])
            ),
            key=lambda x: (-x[0], x[1]),
        )
        for level, b, k in rungs:
            peers = [t for t in study.trials if t.bracket == b]
            order = ranked(study.objective, peers, level)
            nxt = self.rungs_of(b)[k + 1]
            for t in order[: promotion_quota(len(order), self.eta, final=final)]:
                # Paused at this rung and not promoted past it: its launch ended at the rung.
                # (One that reported past the next rung too is promoted from that rung instead.)
                if t.state is TrialState.PAUSED and t.max_resource < nxt <= max(t.curve):
                    continue
                if t.state is TrialState.PAUSED and t.max_resource < nxt:
                    return Promote(t.trial_id, max_resource=nxt)
        return None
