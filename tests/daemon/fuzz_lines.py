"""Malformed requests for the daemon, shared by its fuzz tests (tests/daemon/test_fuzz.py) and
the long campaign (bench/fuzz.py): hypothesis strategies of wire lines, a real `hpod serve` with
one running trial to aim them at (its token, so the report path is reached), and a connection
that sends lines and reads back what comes.

Every request line carries an id, and every batch ends with a ``ping`` of its own id: the batch is
over when that is answered, which also shows the connection kept serving. A line the daemon does
not answer (a valid notification) is then no hang.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from hpod.errors import ErrorCode
from tests.daemon.fakes import spec_toml
from tests.e2e.conftest import DaemonHandle

# The objective's resource key (spec_toml's): a fuzzed report never carries it, so no report
# reaches the end of the trial's run (fifo's max_resource) and the trial keeps its token.
RESOURCE = "epoch"

# The trial tells the test its study, number and token over a socket, then sleeps until the
# daemon stops it. A file of its own: the command's {...} are placeholders.
_TRIAL = """\
import json, os, socket, time
tell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
tell.connect({tell!r})
keys = ("HPOD_STUDY", "HPOD_TRIAL", "HPOD_TOKEN")
tell.sendall(json.dumps(dict((k, os.environ[k]) for k in keys)).encode())
tell.close()
time.sleep(3600)
"""


@dataclass(frozen=True)
class Raw:
    """JSON text put into a line as it is: what ``json.dumps`` will not write (an integer of
    5,000 digits, a bare NaN, 1,000 brackets)."""

    text: str


def encode(value: Any) -> str:
    """JSON text of a fuzzed value: :class:`Raw` verbatim, strings ASCII-escaped (so a lone
    surrogate travels as ``\\ud800``), a non-finite float tagged as the wire says."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        inner = ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return encode(tagged("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")))
    return json.dumps(value)


def request(method: Any, params: Any = None, rid: Any = 1, **extra: Any) -> bytes:
    """One request line; ``params=None`` leaves them out."""
    obj: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method, **extra}
    if params is not None:
        obj["params"] = params
    return encode(obj).encode()


def tagged(value: str) -> dict[str, str]:
    return {"$float": value}


# -- values --------------------------------------------------------------------------------------


def _digits(n: int, negative: bool = False) -> Raw:
    return Raw(("-" if negative else "") + "9" * n)


def _nested(n: int, kind: str) -> Raw:
    if kind == "[":
        return Raw("[" * n + "]" * n)
    return Raw('{"a":' * n + "1" + "}" * n)


# Strings a handler may not expect; every one is Unicode text, which the wire lets through.
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "²",
    "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() says yes
    "\uff11\uff12",  # fullwidth digits
    "\u202e",
    "\ufeff",
    "😀",
    "-1",
    "1e3",
    " 1",
    "0x10",
    "9" * 5000,
    "../../etc/passwd",
    "/",
    "a" * 10_000,
]
# Strings that are no Unicode text: lone surrogates (the third is what surrogateescape makes of a
# byte that is not UTF-8). The wire refuses them.
UNPAIRED = ["\ud800", "\udfff", "a\udcffb"]

_SANE_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=10**300, max_value=10**308),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([tagged("nan"), tagged("inf"), tagged("-inf"), Raw("1e-400"), Raw("-0")]),
    st.text(max_size=12),
    st.sampled_from(ODD_STRINGS),
)

_KEYS = st.one_of(st.text(max_size=8), st.sampled_from(ODD_STRINGS[:13]))

# Odd for a handler, never for the parser: what bad params look like once the line is read.
SANE: st.SearchStrategy[Any] = st.recursive(
    _SANE_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=6,
)

# Deeper than the wire allows, and deeper than the stack: the parser must say so, not crash.
DEEP = st.builds(
    _nested, st.sampled_from([65, 200, 999, 1000, 1500, 5000, 20_000]), st.sampled_from("[{")
)

# Values the wire refuses, each for a reason of its own.
WIRE_BAD: st.SearchStrategy[Any] = st.one_of(
    st.builds(_digits, st.integers(min_value=310, max_value=6000), st.booleans()),
    st.integers(min_value=2 * 10**308, max_value=10**320),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e999")]),
    st.sampled_from([tagged("NaN"), tagged(""), tagged("+inf")]),
    SANE.filter(lambda v: not isinstance(v, str)).map(lambda v: {"$float": v}),
    st.sampled_from(UNPAIRED),
    st.integers(min_value=0xD800, max_value=0xDFFF).map(chr),
    st.builds(lambda k, v: {k: v}, st.sampled_from(UNPAIRED), SANE),  # in a key
    DEEP,
)

VALUES: st.SearchStrategy[Any] = st.one_of(SANE, WIRE_BAD)

# -- specs ---------------------------------------------------------------------------------------

# Without a command no spec admits a study, whatever else is in it: every section is still read,
# with one value swapped for an odd one.
_BASE_SPEC = {
    "name": '"fz"',
    "workdir": '"."',
    "priority": "1",
    "stop_grace_period": '"1s"',
    "objective": {"metric": '"loss"', "mode": '"min"', "resource": '"step"'},
    "space": {"x": '{ param_type = "uniform", range = [0, 1] }'},
    "scheduler": {"type": '"asha"', "max_resource": "9", "min_resource": "1"},
    "searcher": {"type": '"random"'},
    "resources": {"gpus_per_trial": "0"},
    "limits": {"max_trials": "2", "optimization_time": '"1h"', "trial_time": "60"},
    "report": {"period": '"1m"'},
}
_SPEC_SLOTS = [
    (section, key)
    for section, body in _BASE_SPEC.items()
    for key in (body if isinstance(body, dict) else [None])
]


@dataclass(frozen=True)
class Toml:
    """TOML text put into a spec as it is."""

    text: str


TOML_ODD = [
    "9" * 5000,
    "-" + "9" * 4301,
    "0x" + "f" * 5000,
    "1e400",
    "-inf",
    "nan",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "[[1, 2], [3]]",
    "[]",
    "{}",
    '"\\u0000"',
    '"""a\nb"""',
    '"' + "a" * 100_000 + '"',
]


def _toml_value(value: Any) -> str:
    """A fuzzed value as TOML (what TOML cannot hold becomes a string of its JSON)."""
    if isinstance(value, Toml):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else "inf")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }"
    return json.dumps(encode(value)[:200])


def _spec_with(slot: tuple[str, str | None], value: Any) -> str:
    lines: list[str] = []
    tables: list[str] = []
    for section, body in _BASE_SPEC.items():
        if not isinstance(body, dict):
            text = _toml_value(value) if slot == (section, None) else body
            lines.append(f"{section} = {text}")
            continue
        tables.append(f"[{section}]")
        for key, text in body.items():
            tables.append(f"{key} = {_toml_value(value) if slot == (section, key) else text}")
    return "\n".join([*lines, *tables]) + "\n"


def deep_toml(n: int, kind: str) -> str:
    """A spec whose one key nests ``n`` deep: arrays, inline tables, dotted keys (bare or quoted)
    or a table header."""
    if kind == "array":
        return "name = " + "[" * n + "]" * n + "\n"
    if kind == "table":
        return "name = " + "{a = " * n + "1" + "}" * n + "\n"
    if kind == "dotted":  # tomllib's time is quadratic in a dotted key's parts
        return "a" + ".a" * n + " = 1\n"
    if kind == "quoted":
        return '"\\"".' * n + "b = 1\n"
    return "[" + ".".join(["a"] * n) + "]\n"


SPECS: st.SearchStrategy[Any] = st.one_of(
    st.builds(_spec_with, st.sampled_from(_SPEC_SLOTS), SANE),
    st.builds(_spec_with, st.sampled_from(_SPEC_SLOTS), st.sampled_from(TOML_ODD).map(Toml)),
    st.builds(
        deep_toml,
        st.sampled_from([40, 500, 999, 5000, 20_000]),
        st.sampled_from(["array", "table", "dotted", "quoted", "header"]),
    ),
    st.text(max_size=200),
    st.sampled_from(["", "[", "name = ", "= 1", 'name = "\\ud800"', "a = 1\na = 2", "\x00"]),
)

# -- params per method ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Aim:
    """What the fuzzed params may name that is real: one study, its running trial and token."""

    study: str
    trial: int
    token: str
    base_dir: str


@dataclass(frozen=True)
class Field:
    """One param: what a right request sends, and what a wrong one does (the wire lets it by)."""

    real: st.SearchStrategy[Any]
    odd: st.SearchStrategy[Any]


def _study(aim: Aim, *, real: bool = True) -> Field:
    odd = st.one_of(st.sampled_from([*ODD_STRINGS, aim.study + "x", aim.study.upper()]), SANE)
    return Field(st.just(aim.study) if real else odd, odd)


def _trial(aim: Aim) -> Field:
    return Field(
        st.sampled_from([aim.trial, str(aim.trial)]),
        st.one_of(
            st.sampled_from(["²", "¹²", "\u0661", "\uff11", "9" * 5000, "-1", "0x1", " 0", "0 "]),
            st.sampled_from([aim.trial + 1, -aim.trial - 1, 10**300, str(aim.trial) * 19]),
            SANE,
        ),
    )


def _token(aim: Aim) -> Field:
    near = [aim.token[:-1], aim.token.upper(), aim.token + " ", "", aim.token * 1000]
    return Field(st.just(aim.token), st.one_of(st.sampled_from(near), SANE))


_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**308), max_value=10**308),
    st.sampled_from([tagged("nan"), tagged("inf"), tagged("-inf")]),
)
_METRIC_NAMES = st.one_of(st.sampled_from(["loss", "acc", "step"]), _KEYS).filter(
    lambda k: k != RESOURCE
)
_METRICS = Field(
    st.fixed_dictionaries({"loss": _NUMBERS}, optional={"acc": _NUMBERS, "step": _NUMBERS}),
    st.one_of(st.dictionaries(_METRIC_NAMES, SANE, max_size=4), SANE),
)

# Only timeouts that end a wait at once, or bad ones: a connection that waits would stall the run.
BAD_TIMEOUTS: list[Any] = [
    tagged("nan"),
    tagged("inf"),
    tagged("-inf"),
    -1,
    -1e-9,
    1e300,
    10**300,
    "1",
    True,
    [],
    {},
]
_TIMEOUT = Field(
    st.sampled_from([0, 0.0, 0.001]),
    st.one_of(st.sampled_from(BAD_TIMEOUTS), SANE).filter(lambda v: not (v is None or _waits(v))),
)


def _waits(value: Any) -> bool:
    """Whether ``value`` would be taken as a timeout long enough to stall the connection."""
    # Compared, never converted: an int of 300 digits has no float.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.01 < value < 1e12


def _any(real: st.SearchStrategy[Any]) -> Field:
    return Field(real, SANE)


def method_fields(aim: Aim) -> dict[str, dict[str, Field]]:
    """Each wire method's params, by name."""
    study = {"study": _study(aim)}
    trial = {"study": _study(aim), "trial": _trial(aim), "token": _token(aim)}
    return {
        "hello": {"protocol": _any(st.just(1)), "client": _any(st.text(max_size=10))},
        "ping": {},
        "submit": {
            "spec": _any(SPECS),
            "base_dir": Field(st.just(aim.base_dir), st.one_of(st.sampled_from(ODD_STRINGS), SANE)),
            "request_id": _any(st.uuids().map(str)),
        },
        "studies": {},
        "study": study,
        "trials": {
            **study,
            "after": _any(st.integers(min_value=0, max_value=10)),
            "limit": _any(st.integers(min_value=1, max_value=100)),
        },
        "best": study,
        # Never the real study: a fuzzed stop would end it, and with it the trial's token.
        "stop": {"study": _study(aim, real=False)},
        "wait": {**study, "timeout": _TIMEOUT},
        "logs": {
            **study,
            "trial": _trial(aim),
            "stream": _any(st.sampled_from(["stdout", "stderr"])),
            "tail": _any(st.integers(min_value=1, max_value=100)),
        },
        "report": study,
        "gpus": {},
        "trial.report": {**trial, "metrics": _METRICS},
        "trial.oom": trial,
        # The Python library's methods (issue 14). Never a real study for set (it could end it,
        # and with it the trial's token) nor for a final tell.
        "events": {
            **study,
            "after": _any(st.integers(min_value=0, max_value=10)),
            "limit": _any(st.integers(min_value=1, max_value=100)),
            "timeout": _TIMEOUT,
        },
        "decisions": {**study, "after": _any(st.integers(min_value=0, max_value=10))},
        "curves": {
            **study,
            "trial": _any(st.integers(min_value=0, max_value=3)),
            "after": _any(st.integers(min_value=0, max_value=10)),
            "limit": _any(st.integers(min_value=1, max_value=100)),
        },
        "set": {
            "study": _study(aim, real=False),
            "changes": _any(st.fixed_dictionaries({"priority": st.integers(1, 5)})),
        },
        "top": {
            **study,
            "k": _any(st.integers(min_value=1, max_value=5)),
            "only_completed": _any(st.booleans()),
            "all_metrics": _any(st.booleans()),
        },
        "trial": {**study, "trial": _trial(aim), "curve": _any(st.booleans())},
        "ask": study,
        "tell": {
            "study": _study(aim, real=False),
            "trial": _trial(aim),
            "token": _token(aim),
            "metrics": _METRICS,
            "final": _any(st.booleans()),
        },
    }


# Every method the daemon answers (test_fuzz checks that it has no other).
METHODS = sorted(method_fields(Aim("s", 0, "t", "/")))


def _chance(draw: st.DrawFn, one_in: int) -> bool:
    # A middle value: hypothesis draws a range's ends more often than the rest.
    return draw(st.integers(min_value=0, max_value=one_in - 1)) == one_in // 2


@st.composite
def method_line(draw: st.DrawFn, aim: Aim, method: str) -> bytes:
    """One request to ``method``: each param right, odd or left out, now and then an extra one,
    one value the wire must refuse, or params that are no object at all."""
    params: dict[str, Any] = {}
    for key, spec in method_fields(aim)[method].items():
        # A wait always has a timeout: without one it lasts as long as the study.
        if _chance(draw, 10) and key != "timeout":
            continue
        params[key] = draw(spec.odd if _chance(draw, 3) else spec.real)
    if _chance(draw, 5):
        params.setdefault(draw(_KEYS), draw(SANE))
    if _chance(draw, 6):
        params[draw(st.sampled_from(sorted(params) or ["x"]))] = draw(WIRE_BAD)
    body: Any = params
    if method != "wait" and _chance(draw, 10):
        body = draw(VALUES)
    return request(method, body, rid=draw(st.integers(min_value=1, max_value=2**31)))


_PING = request("ping", {})

_ENVELOPES = st.one_of(
    st.builds(
        lambda rid: request("ping", {}, rid=rid),
        st.one_of(VALUES, st.floats(), st.just(True)),
    ),
    st.builds(lambda m: request(m, {}), VALUES),  # an odd method
    st.builds(lambda p: request("ping", p), VALUES),  # odd params
    st.builds(
        lambda v: encode({"jsonrpc": v, "id": 1, "method": "ping"}).encode(),
        VALUES,
    ),
    st.builds(lambda v: encode(v).encode(), VALUES),  # not an envelope at all
)


def _cut(line: bytes, at: int) -> bytes:
    return line[: at % max(1, len(line))]


MALFORMED: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(_cut, st.just(request("ping", {"a": [1, 2, {"b": "c"}]})), st.integers()),
    st.sampled_from(
        [
            b"\xef\xbb\xbf" + _PING,  # a BOM
            b"\xff\xfe" + _PING,
            b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}',
            b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}',
            b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e400}}',
            b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"$float":[1]}}',
            b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":{"$float":{"a":1}}}}',
            b'"\\ud800"',
            b"[" * 100_000,
            b"{" * 100_000,
            b'{"a":' * 50_000,
            b"9" * 100_000,
            b"-" + b"9" * 100_000,
            b"1" + b"0" * 400 + b".5",
            b"1e99999999999999999999",
        ]
    ),
    _ENVELOPES,
    st.builds(lambda v: request("ping", {"x": v}), DEEP),
)


@st.composite
def lines(draw: st.DrawFn, aim: Aim) -> bytes:
    """Every kind: a malformed line or odd envelope one time in five, else one method's odd
    params. (Drawn by hand: in a long list hypothesis's one_of leans hard on its first branch.)"""
    if _chance(draw, 5):
        return draw(MALFORMED)
    return draw(method_line(aim, draw(st.sampled_from(METHODS))))


def clean(line: bytes) -> bytes:
    """A fuzzed line without the newline a line cannot hold."""
    return line.replace(b"\n", b" ").replace(b"\r", b" ")


# -- the daemon ----------------------------------------------------------------------------------


class Wire:
    """A raw connection: sends lines as they are, reads answers while it sends (an answer the
    daemon cannot send because nobody reads would stall both sides)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.setblocking(False)
        self.timeout = timeout
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._buf = bytearray()
        hello = self.exchange([request("hello", {"protocol": 1, "client": "fuzz"}, rid="hello")])
        assert "result" in hello[0], hello

    def close(self) -> None:
        self._sel.close()
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        (answer,) = self.exchange([request(method, params, rid="call")])
        assert "result" in answer, answer
        return answer["result"]

    def exchange(self, lines: Sequence[bytes]) -> list[dict[str, Any]]:
        """Send ``lines`` and a ping; the answers that came before the ping's."""
        sentinel = f"sentinel-{uuid.uuid4()}"
        out = b"".join(clean(line) + b"\n" for line in lines)
        out += request("ping", {}, rid=sentinel) + b"\n"
        view = memoryview(out)
        sent = 0
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.timeout
        while True:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(out) else 0)
            self._sel.modify(self.sock, events)
            ready = self._sel.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"no answer to the ping after {len(lines)} lines")
            for _, mask in ready:
                if mask & selectors.EVENT_WRITE:
                    with contextlib.suppress(BlockingIOError):
                        sent += self.sock.send(view[sent : sent + 262144])
                if mask & selectors.EVENT_READ:
                    chunk = self.sock.recv(262144)
                    if not chunk:
                        raise ConnectionError("the daemon closed the connection")
                    self._buf += chunk
            while (nl := self._buf.find(b"\n")) >= 0:
                answer = json.loads(self._buf[:nl])
                del self._buf[: nl + 1]
                if answer.get("id") == sentinel:
                    assert answer.get("result", {}).get("pong") is True, answer
                    return answers
                answers.append(answer)


def code_of(answer: dict[str, Any]) -> str:
    """``"ok"``, or the error's ErrorCode name (its number if it has none)."""
    if "error" not in answer:
        return "ok"
    code = answer["error"].get("code")
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def internal_errors(answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        a
        for a in answers
        if code_of(a) == "INTERNAL"
        or str(a.get("error", {}).get("message", "")).startswith("internal error")
    ]


def log_problems(text: str) -> list[str]:
    """Lines of the daemon's JSON log that hold a traceback or a crashed handler."""
    return [
        line[:300]
        for line in text.splitlines()
        if "Traceback" in line or "handler_crashed" in line or '"exception"' in line
    ]


@dataclass
class Target:
    """A running daemon with one running trial, and what the fuzzed lines may name."""

    daemon: DaemonHandle
    aim: Aim
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    @property
    def socket(self) -> str:
        return self.daemon.socket

    @property
    def log_path(self) -> Path:
        return self.daemon.root / f"daemon{self.daemon.starts}.log"

    def log_size(self) -> int:
        self.daemon.log.flush()
        return self.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/PID/status")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def stop(self) -> int:
        rc = self.daemon.stop()
        shutil.rmtree(self.daemon.root, ignore_errors=True)
        return rc


def start_target(root: Path, *, extra: Sequence[str] = ()) -> Target:
    """``hpod serve`` in ``root`` (one slot), with a study whose one trial has started and told
    its token."""
    handle = DaemonHandle(root, slots=1)
    handle.start(*extra)
    tell_path = str(root / "t")
    tell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tell.bind(tell_path)
    tell.listen(1)
    tell.settimeout(60.0)
    script = root / "trial_fuzz.py"
    script.write_text(_TRIAL.format(tell=tell_path))
    spec = spec_toml(
        "fuzz",
        command=json.dumps([sys.executable, str(script)]),
        top=f'workdir = {json.dumps(str(root))}\nstop_grace_period = "1s"',
        scheduler='type = "fifo"\nmax_resource = 1000000000',
        limits="max_trials = 1",
    )
    try:
        with Wire(handle.socket) as wire:
            wire.call("submit", {"spec": spec, "base_dir": str(root)})
        conn, _ = tell.accept()
        with conn:
            conn.settimeout(60.0)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    except BaseException:
        handle.stop()
        raise
    finally:
        tell.close()
    told = json.loads(data)
    aim = Aim(told["HPOD_STUDY"], int(told["HPOD_TRIAL"]), told["HPOD_TOKEN"], str(root))
    return Target(handle, aim)
