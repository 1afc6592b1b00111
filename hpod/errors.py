"""One exception tree and one code enum for the whole of hpod.

Stdlib only: the trial reporter imports this module, and it must import in milliseconds.
Every error that crosses the wire carries an :class:`ErrorCode`; every code maps to one
`hpodctl` exit status, so scripts can tell a bad spec from a missing daemon.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any


class ErrorCode(enum.IntEnum):
    # JSON-RPC 2.0's own codes first, so a generic client understands them.
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL = -32603
    # hpod's codes live in the implementation-defined server range.
    LINE_TOO_LONG = -32001
    HELLO_REQUIRED = -32002
    BAD_TOKEN = -32003
    NOT_FOUND = -32004
    PERMISSION_DENIED = -32005
    INVALID_SPEC = -32006
    BAD_STATE = -32007
    PROTOCOL_VERSION = -32008
    SHUTTING_DOWN = -32009
    # A connection over the daemon's caps (max_connections, max_connections_per_uid): refused
    # with this one line, then closed.
    TOO_MANY_CONNECTIONS = -32030
    # The wire's limits on what a line may hold (hpod.wire.loads): valid JSON, but more than a
    # request here can mean.
    NESTING_TOO_DEEP = -32020
    NUMBER_OUT_OF_RANGE = -32021
    # A submit asking for GPUs this daemon does not have (no NVML, none allowed, fewer than a
    # trial needs). Not INVALID_SPEC: the same spec is right on a machine with GPUs, and the fix
    # may be the machine, not the file; not BAD_STATE: no study exists yet to be in one.
    NO_GPUS = -32040
    # A write the store could not make because the state dir's disk is full (SQLITE_FULL,
    # ENOSPC): a report so answered was not stored and not counted; send it again later. Not
    # INTERNAL: nothing is wrong with the daemon or the request, and it passes by itself.
    STORE_FULL = -32050
    # containment = "cgroup" in the daemon's configuration, and no cgroup can be made here (no
    # cgroup v2, not root and not a delegated systemd service, a read-only cgroup tree): the
    # daemon does not start rather than run trials without the containment it was told to use.
    CONTAINMENT_UNAVAILABLE = -32060
    # Never sent by the daemon: raised by a client that could not reach one.
    UNAVAILABLE = -32099

    @property
    def exit_status(self) -> int:
        return _EXIT_STATUS[self]


# 0 is success and 2 is argparse's usage error; the rest are ours, one per code.
_EXIT_STATUS: dict[ErrorCode, int] = {
    ErrorCode.PARSE_ERROR: 10,
    ErrorCode.INVALID_REQUEST: 10,
    ErrorCode.METHOD_NOT_FOUND: 10,
    ErrorCode.INVALID_PARAMS: 11,
    ErrorCode.INTERNAL: 12,
    ErrorCode.LINE_TOO_LONG: 10,
    ErrorCode.HELLO_REQUIRED: 10,
    ErrorCode.BAD_TOKEN: 13,
    ErrorCode.NOT_FOUND: 4,
    ErrorCode.PERMISSION_DENIED: 5,
    ErrorCode.INVALID_SPEC: 6,
    ErrorCode.BAD_STATE: 7,
    ErrorCode.PROTOCOL_VERSION: 14,
    ErrorCode.SHUTTING_DOWN: 8,
    ErrorCode.TOO_MANY_CONNECTIONS: 15,
    ErrorCode.NESTING_TOO_DEEP: 10,
    ErrorCode.NUMBER_OUT_OF_RANGE: 10,
    ErrorCode.NO_GPUS: 16,
    ErrorCode.STORE_FULL: 17,
    ErrorCode.CONTAINMENT_UNAVAILABLE: 18,
    ErrorCode.UNAVAILABLE: 3,
}

# `hpodctl wait` and `submit --wait` exit with this when the study ended but not completed.
EXIT_STUDY_NOT_COMPLETED = 9
# `hpodctl wait --timeout S` when S seconds passed and the study is still running.
EXIT_WAIT_TIMED_OUT = 19


class HpodError(Exception):
    """The root of every error hpod raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data or {})

    def to_wire(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.data:
            err["data"] = self.data
        return err

    @staticmethod
    def from_wire(err: Mapping[str, Any]) -> HpodError:
        """Rebuild the most specific exception for an error object received off the wire."""
        try:
            code = ErrorCode(int(err.get("code", ErrorCode.INTERNAL)))
        except ValueError:
            code = ErrorCode.INTERNAL
        message = str(err.get("message", "unknown error"))
        raw = err.get("data")
        data = dict(raw) if isinstance(raw, Mapping) else {}
        if code is ErrorCode.INVALID_SPEC:
            problems = data.get("problems")
            if isinstance(problems, list):
                return SpecError([str(p) for p in problems])
        cls = _BY_CODE.get(code, HpodError)
        exc = cls(message, data=data)
        if exc.code is not code:
            # A code without a class of its own (INTERNAL, or one from a newer daemon's
            # spelling) keeps its number, so the exit status still says what happened.
            exc.code = code
        return exc


class ProtocolError(HpodError):
    """A peer broke the wire contract: bad JSON, bad envelope, line too long, no hello."""

    code = ErrorCode.INVALID_REQUEST


class ParseError(ProtocolError):
    """A line that is not UTF-8 JSON."""

    code = ErrorCode.PARSE_ERROR


class LineTooLong(ProtocolError):
    """A line over the wire's cap (it is discarded; the connection keeps serving)."""

    code = ErrorCode.LINE_TOO_LONG


class HelloRequired(ProtocolError):
    """A call before the connection's hello."""

    code = ErrorCode.HELLO_REQUIRED


class ProtocolMismatch(ProtocolError):
    """A hello asking for a protocol version this side does not speak."""

    code = ErrorCode.PROTOCOL_VERSION


class NestingTooDeep(ProtocolError):
    """A line whose objects and arrays nest deeper than :data:`hpod.wire.MAX_DEPTH`."""

    code = ErrorCode.NESTING_TOO_DEEP


class NumberOutOfRange(ProtocolError):
    """A number in a line that a double cannot hold: an integer of hundreds of digits, 1e400."""

    code = ErrorCode.NUMBER_OUT_OF_RANGE


class InvalidParams(HpodError):
    code = ErrorCode.INVALID_PARAMS


class MethodNotFound(HpodError):
    code = ErrorCode.METHOD_NOT_FOUND


class TokenRejected(HpodError):
    code = ErrorCode.BAD_TOKEN


class NotFound(HpodError):
    code = ErrorCode.NOT_FOUND


class PermissionDenied(HpodError):
    code = ErrorCode.PERMISSION_DENIED


class BadState(HpodError):
    """An operation that the current state does not allow (a transition not written down)."""

    code = ErrorCode.BAD_STATE


class ShuttingDown(HpodError):
    code = ErrorCode.SHUTTING_DOWN


class TooManyConnections(HpodError):
    """The daemon refused a connection: its owner's, or everyone's, cap of open connections."""

    code = ErrorCode.TOO_MANY_CONNECTIONS


class NoGpus(HpodError):
    """A study asks for GPUs where the daemon has none for it, and does not accept CPU slots."""

    code = ErrorCode.NO_GPUS


class StoreFull(HpodError):
    """The state dir's disk is full: the write was not made (a report not stored, not counted)."""

    code = ErrorCode.STORE_FULL


class ContainmentUnavailable(HpodError):
    """The containment the configuration asks for (cgroups) cannot be had on this machine."""

    code = ErrorCode.CONTAINMENT_UNAVAILABLE


class DaemonUnavailable(HpodError):
    code = ErrorCode.UNAVAILABLE


class SpecError(HpodError):
    """A study spec with one or more problems, each naming its key path."""

    code = ErrorCode.INVALID_SPEC

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            problems_message("the study spec", self.problems),
            data={"problems": list(self.problems)},
        )


def problems_message(source: str, problems: Sequence[str]) -> str:
    """``"the study spec has 2 problems:\\n  - a\\n  - b"``: how every error that lists problems
    by key path (:class:`SpecError`, the daemon's ``ConfigError``) words them, one to a line.

    Here rather than beside the readers in ``hpod.core.problems``: this module is the leaf that
    everything, the stdlib-only trial reporter included, imports, and it imports nothing of hpod.
    """
    count = len(problems)
    noun = "problem" if count == 1 else "problems"
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{source} has {count} {noun}:\n{lines}"


_BY_CODE: dict[ErrorCode, type[HpodError]] = {
    ErrorCode.PARSE_ERROR: ParseError,
    ErrorCode.INVALID_REQUEST: ProtocolError,
    ErrorCode.LINE_TOO_LONG: LineTooLong,
    ErrorCode.HELLO_REQUIRED: HelloRequired,
    ErrorCode.PROTOCOL_VERSION: ProtocolMismatch,
    ErrorCode.NESTING_TOO_DEEP: NestingTooDeep,
    ErrorCode.NUMBER_OUT_OF_RANGE: NumberOutOfRange,
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.METHOD_NOT_FOUND: MethodNotFound,
    ErrorCode.BAD_TOKEN: TokenRejected,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.BAD_STATE: BadState,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.TOO_MANY_CONNECTIONS: TooManyConnections,
    ErrorCode.NO_GPUS: NoGpus,
    ErrorCode.STORE_FULL: StoreFull,
    ErrorCode.CONTAINMENT_UNAVAILABLE: ContainmentUnavailable,
    ErrorCode.UNAVAILABLE: DaemonUnavailable,
}
