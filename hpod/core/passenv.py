"""Which of the submitter's environment a study's trials get: the names, and the filter.

A system daemon's own environment is systemd's: its ``PATH`` finds the system's ``python``, not
the submitter's venv or conda env, and a spec's ``command = ["python", ...]`` ran the wrong one.
So a submit carries the part of the submitter's environment that decides which programs and
packages a trial finds (``PASSED``, the locale's ``LC_*``), plus the names the spec's
``pass_env`` lists, and the daemon uses it as the base of that study's trials' environment.

Never passed, whatever a spec lists: the trial contract's names (``HPOD_*``, the CUDA device
choice), which the daemon sets for each run, and the service manager's (``NOTIFY_SOCKET``,
``LISTEN_FDS``, ...), with which a trial could speak for the daemon.

Stdlib only: ``hpod.client`` imports it to choose what to send.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# What finds programs and packages (a venv, a conda env, a module path, shared libraries) and
# what a program needs to run as it does in the submitter's shell (home, locale, time zone,
# temporary folder).
PASSED = (
    "PATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
)
PASSED_PREFIX = "LC_"

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The daemon's to set (the trial contract) or the service manager's to speak (systemd).
NEVER_PASSED = re.compile(
    r"HPOD_.*|CUDA_VISIBLE_DEVICES|CUDA_DEVICE_ORDER|NOTIFY_SOCKET|LISTEN_(?:FDS|PID|FDNAMES)"
    r"|WATCHDOG_(?:USEC|PID)|INVOCATION_ID|JOURNAL_STREAM|MANAGERPID|SYSTEMD_EXEC_PID"
)

# Bounds on what one submit may carry: an environment is a few KiB; a Linux argument or
# variable string is at most 128 KiB (MAX_ARG_STRLEN).
MAX_VARIABLES = 256
MAX_NAME = 256
MAX_VALUE = 128 * 1024
MAX_TOTAL = 256 * 1024


def never_passed(name: str) -> bool:
    return NEVER_PASSED.fullmatch(name) is not None


def is_passed(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a submit carries ``name``: one of ``PASSED``, ``LC_*``, or listed in ``extra``
    (a spec's ``pass_env``), and never a name the daemon or the service manager owns."""
    if never_passed(name) or not ENV_NAME.fullmatch(name):
        return False
    return name in PASSED or name.startswith(PASSED_PREFIX) or name in set(extra)


def _sendable(value: str) -> bool:
    # A value from bytes that are not UTF-8 holds lone surrogates (os.environ decodes with
    # surrogateescape), which the wire refuses; a NUL cannot reach execve.
    if "\0" in value or len(value) > MAX_VALUE:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def submit_env(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The part of ``environ`` a submit carries (see the module's docstring), in name order."""
    names = set(extra)
    return {
        name: environ[name]
        for name in sorted(environ)
        if is_passed(name, names) and _sendable(environ[name])
    }


def env_problem(env: object) -> str | None:
    """What is wrong with a submit's ``env`` as received, or None: it must be an object of
    name: string, names like ``ENV_NAME``, within the bounds above."""
    if not isinstance(env, Mapping):
        return f"must be an object of NAME: value strings, not a {type(env).__name__}"
    if len(env) > MAX_VARIABLES:
        return f"holds {len(env)} variables; at most {MAX_VARIABLES} are taken"
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or len(name) > MAX_NAME or not ENV_NAME.fullmatch(name):
            shown = repr(name) if not isinstance(name, str) or len(name) <= 40 else "a long name"
            return f"{shown} is not a variable name (letters, digits and _, not a digit first)"
        if not isinstance(value, str):
            return f"{name}: the value must be a string, not a {type(value).__name__}"
        if "\0" in value:
            return f"{name}: the value holds a NUL character, which no environment can"
        if len(value) > MAX_VALUE:
            return f"{name}: the value has {len(value)} characters; at most {MAX_VALUE}"
        total += len(name) + len(value)
    if total > MAX_TOTAL:
        return f"holds {total} characters in all; at most {MAX_TOTAL}"
    return None
