"""The wire: newline-delimited JSON with a JSON-RPC 2.0 envelope.

Stdlib only, shared by the daemon, the control client and the trial reporter. One request or
response per line, UTF-8, at most :data:`MAX_LINE` bytes including the newline. JSON has no NaN or
infinity, so a non-finite float travels as a tagged object ``{"$float": "nan"}`` and ranks as the
worst value wherever it is compared.

A line is also held to what a request here can mean, so that no handler meets a value it cannot
take: objects and arrays at most :data:`MAX_DEPTH` deep, every number one a double can hold (an
integer of 4,301 digits, or 1e400, is refused, not read as an int too big to print or as an
infinity), every string Unicode text (no lone surrogate: ``"\\ud800"`` is valid JSON but no
character, and cannot be encoded to UTF-8 for a path, a token or the store).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpod.errors import (
    DaemonUnavailable,
    HpodError,
    InvalidParams,
    LineTooLong,
    NestingTooDeep,
    NumberOutOfRange,
    ParseError,
    ProtocolError,
)

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20
# The deepest nesting of objects and arrays a line may hold: a request is a few levels deep (the
# envelope, params, a report's metrics), and a cap this low keeps every recursive walk (tagging an
# answer, serializing a metric, a repr in a message) far from the interpreter's recursion limit.
MAX_DEPTH = 64
# A double holds at most 1.8e308: an integer of more digits is refused before int() reads it
# (which would take quadratic time, and past 4,300 digits raises).
_MAX_INT_DIGITS = 309

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


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters: what a message may echo of a peer's
    input (a 1 MiB string, a list nested 60 deep) without growing with it."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        return f"an integer of {len(str(value))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _untag_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _TAG in obj:
        raw = obj[_TAG]
        # A string first: anything else (a list) is not even hashable, let alone a tag.
        if isinstance(raw, str) and raw in _NONFINITE:
            return _NONFINITE[raw]
        raise ProtocolError(f"bad tagged float {shown(raw)}: use 'nan', 'inf' or '-inf'")
    return obj


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f'bare {name} is not JSON: send a non-finite number as {{"{_TAG}": "nan"}}')


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > _MAX_INT_DIGITS:
        raise NumberOutOfRange(
            f"an integer of {digits} digits is out of range: a number on the wire must fit a "
            "double (at most about 1.8e308)"
        )
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise NumberOutOfRange(f"{text[:12]}... is out of range: a number must fit a double")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: Python reads it as an infinity nobody sent
        raise NumberOutOfRange(
            f"{shown(text, 40)} is out of a double's range; send an infinity as "
            f'{{"{_TAG}": "inf"}}'
        )
    return value


# Escaped surrogates, the only way a lone one gets into a line (raw ones are not UTF-8).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_shape(obj: Any, line: bytes, max_depth: int) -> None:
    """NestingTooDeep, or ParseError for a lone surrogate, in a parsed line. Walks it only when
    the bytes say it could be either: nearly every line has few brackets and no escape."""
    deep = line.count(b"[") + line.count(b"{") > max_depth
    strings = _SURROGATE_ESCAPE.search(line) is not None
    if not (deep or strings):
        return
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
            continue
        if isinstance(item, dict):
            children: Any = item.values()
            if strings:
                for key in item:
                    _check_text(key)
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise _too_deep(max_depth)
        stack.extend((c, depth + 1) for c in children if strings or isinstance(c, (dict, list)))


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise ParseError(
            f"a string holds a lone surrogate (\\u{ord(char):04x}), which is no character: send "
            "UTF-8 text (a name or path that is not UTF-8 cannot be sent)"
        ) from None


def _too_deep(max_depth: int) -> NestingTooDeep:
    return NestingTooDeep(
        f"the line nests objects and arrays more than {max_depth} deep; a request needs a few "
        "levels (report flat metrics, or objects a few levels deep)"
    )


def loads_json(text: str) -> Any:
    """Parse JSON written with :func:`tag` (the store's columns), restoring non-finite floats."""
    return _STORE_DECODER.decode(text)


# One decoder for every column: ``json.loads`` with a hook makes a new one each call, a tenth
# of a restart that reads 270,000 reports.
_STORE_DECODER = json.JSONDecoder(object_hook=_untag_hook, parse_constant=_reject_constant)


# One encoder and one decoder for every line: ``json.dumps`` with separators and ``json.loads``
# with hooks each make a new one per call (a few microseconds of every report's round trip).
ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(obj: Any) -> bytes:
    """One wire line (with its newline) for a JSON-able object."""
    try:
        # Nearly every answer holds no NaN or infinity: encoded as it is, without the walk
        # that tags them (half the encoding of a page of trials).
        text = ENCODER.encode(obj)
    except ValueError:
        text = ENCODER.encode(tag(obj))
    return text.encode() + b"\n"


_WIRE_DECODER = json.JSONDecoder(
    object_hook=_untag_hook,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def loads(line: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one wire line; every malformation is a :class:`ProtocolError` naming it."""
    if len(line) > MAX_LINE:
        raise LineTooLong(f"line of {len(line)} bytes is over the {MAX_LINE}-byte cap")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        obj = _WIRE_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"line is not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        # Deeper than the parser's stack, whatever is left of it here: past the cap either way.
        raise _too_deep(max_depth) from None
    _check_shape(obj, line, max_depth)
    return obj


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


TCP_SCHEMES = ("tcp://", "tls://")


def open_socket(path: str, timeout: float | None, cafile: str | None = None) -> socket.socket:
    """A connected socket to a daemon: a Unix socket path, or ``tcp://`` / ``tls://`` and
    ``host:port`` (the trials' TCP endpoint, hpod.daemon.tcp); DaemonUnavailable when nothing
    listens there."""
    scheme = next((s for s in TCP_SCHEMES if path.startswith(s)), None)
    if scheme is None:
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
        return sock
    host, _, port = path[len(scheme) :].rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit():
        raise ProtocolError(f"{path!r} is not {scheme}host:port")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except ConnectionRefusedError as exc:
        raise DaemonUnavailable(f"no hpod daemon is listening on {path}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one line each way, at once
    if scheme == "tls://":
        import ssl  # only a trial on another machine pays for it

        ctx = ssl.create_default_context(cafile=cafile)
        try:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            # Not a daemon that is away: one it must not trust. Never retried.
            raise ProtocolError(
                f"the daemon on {path} is not trusted: {exc.verify_message} (HPOD_TLS_CA names "
                "the certificate it is checked against)"
            ) from None
        except BaseException:
            sock.close()
            raise
    return sock


class SyncConnection:
    """A blocking connection for clients and trials: ``hello`` on connect, then calls.

    Not thread-safe by itself; callers that share one hold their own lock.
    """

    def __init__(
        self,
        path: str,
        *,
        client: str,
        timeout: float | None = 30.0,
        cafile: str | None = None,
    ) -> None:
        """``path`` is a Unix socket's, or a trial endpoint's ``tcp://host:port`` or
        ``tls://host:port`` (checked against ``cafile``, else the system's CAs)."""
        self.path = path
        sock = open_socket(path, timeout, cafile)
        self._sock = sock
        self._file = sock.makefile("rb")
        self._next_id = 0
        try:
            self.server: dict[str, Any] = self.call(
                "hello", {"protocol": PROTOCOL_VERSION, "client": client}
            )
        except BaseException:  # refused (too many connections), or no answer: not left open
            self.close()
            raise

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        self._next_id += 1
        rid = self._next_id
        try:
            self._sock.sendall(Request(rid, method, dict(params or {})).line())
        except BrokenPipeError:
            # A daemon that refused the connection (too many open) said why in one line before
            # it closed; that line, when there is one, tells more than the broken pipe.
            if not (line := self._file.readline(MAX_LINE + 1)):
                raise
        else:
            line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise DaemonUnavailable(f"the daemon on {self.path} closed the connection")
        # An answer may echo a request's values (a report's metrics) a few levels further in.
        return unwrap_response(loads(line, max_depth=2 * MAX_DEPTH), rid)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._sock.close()

    def shutdown(self) -> None:
        """End a call blocked in another thread (a long poll): its read sees the end at once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
