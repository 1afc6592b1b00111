"""The plain scheduler: every trial runs to ``max_resource``.

The scheduler protocol and the plans it answers with are in :mod:`hpod.core.plans`; the rung
schedulers in :mod:`hpod.core.asha`, the median stopping rule in :mod:`hpod.core.median`, DyHPO in
:mod:`hpod.core.dyhpo`, and :func:`hpod.core.study.make_scheduler` picks one for a spec.
"""

from __future__ import annotations

from hpod.core.plans import NewTrial, Plan, StudyView, TrialView
from hpod.core.states import Decision


class FifoScheduler:
    """Every trial runs to ``max_resource``; no early stopping, no pausing."""

    def __init__(self, max_resource: float) -> None:
        self.max_resource = max_resource

    def on_report(self, study: StudyView, trial: TrialView, resource: float) -> Decision:
        return Decision.STOP if resource >= trial.max_resource else Decision.CONTINUE

    def next(self, study: StudyView, *, can_start_new: bool) -> Plan | None:
        return NewTrial(self.max_resource) if can_start_new else None
