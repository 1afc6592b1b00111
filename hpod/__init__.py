"""hpod: a hyperparameter-optimization daemon for GPU machines.

Importing the package stays cheap (the trial reporter imports through it): the control client and
``hpod.Optimizer`` are loaded on first use, and neither imports the daemon package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "Optimizer", "__version__"]

if TYPE_CHECKING:
    from hpod.client import Client
    from hpod.optimizer import Optimizer


def __getattr__(name: str) -> Any:
    if name == "Client":
        from hpod.client import Client

        return Client
    if name == "Optimizer":
        from hpod.optimizer import Optimizer

        return Optimizer
    raise AttributeError(f"module 'hpod' has no attribute {name!r}")
