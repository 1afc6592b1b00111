"""The wire: newline-delimited JSON with a JSON-RPC 2.0 envelope.

Stdlib only, shared by the daemon, the control client and the trial reporter. One request or
response per line, UTF-8, at most :data:`MAX_LINE` bytes including the newline. JSON has no NaN or
infinity, so a non-finite float travels as a tagged object ``{"$float": "nan"}`` and ranks as the
worst value wherever it is compared.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpod.errors import (
    DaemonUnavailable,
    HpodError,
    InvalidParams,
    LineTooLong,
    ParseError,
    ProtocolError,
)

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20

_TAG = "$float"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def tag(value: Any) -> Any:
    """Replace non-finite floats with their tagged form, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Mapping):
        return {str(k): tag(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tag(v) for v in value]
    return value


def _untag_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _TAG in obj:
        raw = obj[_TAG]
        if raw in _NONFINITE:
            return _NONFINITE[raw]
        raise ProtocolError(f"bad tagged float {raw!r}: use 'nan', 'inf' or '-inf'")
    return obj


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f'bare {name} is not JSON: send a non-finite number as {{"{_TAG}": "nan"}}')


def loads_json(text: str) -> Any:
    """Parse JSON written with :func:`tag` (the store's columns), restoring non-finite floats."""
    return json.loads(text, object_hook=_untag_hook, parse_constant=_reject_constant)


def dumps(obj: Any) -> bytes:
    """One wire line (with its newline) for a JSON-able object."""
    return json.dumps(tag(obj), separators=(",", ":"), allow_nan=False).encode() + b"\n"


def loads(line: bytes) -> Any:
    """Parse one wire line; every malformation is a :class:`ProtocolError` naming it."""
    if len(line) > MAX_LINE:
        raise LineTooLong(f"line of {len(line)} bytes is over the {MAX_LINE}-byte cap")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_hook=_untag_hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ParseError(f"line is not JSON: {exc.msg} at column {exc.colno}") from None


@dataclass(frozen=True)
class Request:
    id: int | str | None  # None: a notification, answered with nothing
    method: str
    params: dict[str, Any]

    @classmethod
    def from_obj(cls, obj: Any) -> Request:
        if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
            raise ProtocolError('a request is a JSON object with "jsonrpc": "2.0"')
        method = obj.get("method")
        if not isinstance(method, str) or not method:
            raise ProtocolError('a request needs a "method" string')
        rid = obj.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
            raise ProtocolError('"id" must be a number or a string')
        params = obj.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams('"params" must be an object of named parameters')
        return cls(rid, method, params)

    def line(self) -> bytes:
        obj: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method, "params": self.params}
        if self.id is not None:
            obj["id"] = self.id
        return dumps(obj)


def result_line(rid: int | str | None, result: Any) -> bytes:
    return dumps({"jsonrpc": "2.0", "id": rid, "result": result})


def error_line(rid: int | str | None, error: HpodError) -> bytes:
    return dumps({"jsonrpc": "2.0", "id": rid, "error": error.to_wire()})


def unwrap_response(obj: Any, expected_id: int | str) -> Any:
    """The result of a response object, or its error raised as the matching HpodError."""
    if not isinstance(obj, dict) or obj.get("jsonrpc") != "2.0":
        raise ProtocolError("the daemon sent something that is not a JSON-RPC 2.0 response")
    if "error" in obj:
        err = obj["error"]
        raise HpodError.from_wire(err if isinstance(err, Mapping) else {})
    if obj.get("id") != expected_id:
        raise ProtocolError(f"response id {obj.get('id')!r} does not match request {expected_id!r}")
    return obj.get("result")


def no_daemon_message(path: str) -> str:
    return (
        f"no hpod daemon is listening on {path}. Start one with "
        f"`hpod serve --socket {path}` (or `systemctl start hpod` for the system service), "
        "or point --socket / HPOD_SOCKET at a running one."
    )


class SyncConnection:
    """A blocking connection for clients and trials: ``hello`` on connect, then calls.

    Not thread-safe by itself; callers that share one hold their own lock.
    """

    def __init__(self, path: str, *, client: str, timeout: float | None = 30.0) -> None:
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonUnavailable(no_daemon_message(path)) from exc
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._file = sock.makefile("rb")
        self._next_id = 0
        self.server: dict[str, Any] = self.call(
            "hello", {"protocol": PROTOCOL_VERSION, "client": client}
        )

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        self._next_id += 1
        rid = self._next_id
        self._sock.sendall(Request(rid, method, dict(params or {})).line())
        line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise DaemonUnavailable(f"the daemon on {self.path} closed the connection")
        return unwrap_response(loads(line), rid)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
