"""hpod: a hyperparameter-optimization daemon for GPU machines.

Importing the package stays cheap (the trial reporter imports through it): the control client is
loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__"]

if TYPE_CHECKING:
    from hpod.client import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from hpod.client import Client

        return Client
    raise AttributeError(f"module 'hpod' has no attribute {name!r}")
