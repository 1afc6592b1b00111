"""Model fits for the model-based searchers and schedulers, kept apart from their decisions.

A model-based component (the BO searcher, the DyHPO scheduler) never fits a model while deciding.
It says what it wants fitted (``wants_fit`` returns a :class:`FitRequest`: the data as plain
arrays, a seed, a key naming the data, and its :class:`Owner`), somebody runs :func:`fit` on it,
and the result comes back through ``install``. Decisions use the last installed model, or the
model-free rule while none is installed: never a wait.

Who runs the fit is the shell's choice. The simulator runs it at once, at the decision point that
asked, so the same seed gives the same trace; the daemon runs it in a worker process while it
keeps answering reports, and installs the model when it arrives. :func:`fit` is a pure function
of the request (same request, same model, bit for bit), so a study restored from the store refits
exactly the model it had.

The request names its fitting function by module path: a DyHPO fit imports torch, in whichever
process runs it, and nothing else ever does.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class Owner(enum.StrEnum):
    """Which part of a study a model is for: the study installs the model there."""

    SCHEDULER = "scheduler"
    SEARCHER = "searcher"


@dataclass(frozen=True)
class FitRequest:
    """What to fit: ``function`` (``module:name``) applied to ``data`` with ``seed``, for
    ``owner``."""

    function: str
    owner: Owner
    key: tuple[Any, ...]  # names the data: a component ignores a model fitted on older data
    seed: int
    data: Mapping[str, Any] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.function.rpartition(":")[2]


def fit(request: FitRequest, between_steps: Callable[[], None] | None = None) -> Any:
    """Run the request's fitting function. Pure: the same request gives the same model.

    ``between_steps`` is called between the steps of a long fit (DyHPO's training loop): the
    worker process backs off there while the machine is busy (:class:`hpod.fit.cpu.Backoff`). It
    can delay a fit, never change it."""
    module, _, name = request.function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return fn(request, between_steps or _nothing)


def _nothing() -> None:
    pass


class Modeled(Protocol):
    """A searcher or scheduler that decides with a fitted model."""

    def install(self, request: FitRequest, model: Any) -> None:
        """Use ``model`` (``fit(request)``) from the next decision on."""
        ...


def refit_due(n: int, last_n: int) -> bool:
    """Whether ``n`` observations are enough more than the ``last_n`` of the last fit: every new
    one while there are few, then every 10 % more, so a long study fits O(log n) times."""
    return n >= last_n + max(1, last_n // 10)
