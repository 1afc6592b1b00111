"""The daemon's configuration: `etc/hpod.toml` (every key optional), then command-line flags.

``DaemonConfig.from_file(path).with_overrides(socket=args.socket, ...)`` is the whole story:
the file is read once at start-up, every problem in it is reported at once with its key path,
and a flag given on the command line wins over the file. Values that depend on the machine
(the socket and state paths, the number of CPU slots) stay ``None`` in the model and are
resolved by the ``resolved_*`` methods, so a configuration can be compared and printed without
reading the environment.
"""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpod.core.durations import parse_duration
from hpod.core.problems import Section, did_you_mean, type_name
from hpod.core.sizes import parse_size
from hpod.errors import ErrorCode, HpodError, problems_message
from hpod.paths import MAX_SOCKET_PATH_BYTES, default_socket_path, default_state_dir

__all__ = [
    "BUSY_POLICIES",
    "CONTAINMENTS",
    "DURABILITIES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "READ_ACCESS",
    "ConfigError",
    "DaemonConfig",
    "GpuConfig",
    "default_socket_path",
    "default_state_dir",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "console", "json")
DURABILITIES = ("normal", "fsync")
BUSY_POLICIES = ("avoid", "share", "ignore")
# How what a trial starts is kept from outliving it (hpod.daemon.containment): a cgroup per run
# where one can be made, else the shim's subreaper ("auto"); only cgroups; only the subreaper.
CONTAINMENTS = ("auto", "cgroup", "subreaper")
# Who may read a study over the socket: everyone allowed on it, or its owner (root, admins).
READ_ACCESS = ("anyone", "owner")


class ConfigError(HpodError):
    """A daemon configuration with one or more problems, each naming its key path."""

    code = ErrorCode.INVALID_PARAMS

    def __init__(self, problems: Sequence[str], *, source: str = "the configuration") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__(
            problems_message(source, self.problems),
            data={"problems": list(self.problems), "source": source},
        )


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuConfig:
    """Which GPUs the daemon may hand to trials, and how it treats ones that others use."""

    allowed: tuple[str, ...] = ()  # indices or UUIDs; () = every GPU NVML sees
    # A GPU that processes hpod did not start are using: "avoid" it (busy while any is on it or
    # free memory is short), "share" it (busy only while free memory is short), or "ignore"
    # them (free unless hpod's own trials hold it).
    busy_policy: str = "avoid"
    min_free_memory_mib: int = 1024  # avoid/share: less free memory than this = busy
    refresh_seconds: float = 5.0  # how often NVML is polled

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": list(self.allowed),
            "busy_policy": self.busy_policy,
            "min_free_memory_mib": self.min_free_memory_mib,
            "refresh_seconds": self.refresh_seconds,
        }


@dataclass(frozen=True)
class DaemonConfig:
    socket: str | None = None  # control socket; None = default_socket_path()
    trial_socket: str | None = None  # trials' socket; None = the control socket
    state_dir: Path | None = None  # None = default_state_dir()
    cpu_slots: int | None = None  # trials with gpus_per_trial = 0 at once; None = os.cpu_count()
    stop_grace: float = 10.0  # seconds between a trial's SIGTERM and its SIGKILL at shutdown
    log_level: str = "info"
    log_format: str = "auto"  # auto = console on a TTY, JSON otherwise
    durability: str = "normal"  # normal | fsync: SQLite synchronous=NORMAL or FULL
    socket_mode: int = 0o660
    socket_group: str | None = None  # None = the daemon's own group
    admins: tuple[int, ...] = ()  # uids that may stop anyone's study (root always may)
    # Open connections at once: everyone's (lowered to what RLIMIT_NOFILE leaves room for), and
    # one uid's (each of its running trials adds one); over either, refused with one line.
    max_connections: int = 512
    max_connections_per_uid: int = 64
    # Seconds a control connection may sit between requests before it is closed; 0 = never. A
    # connection a trial reported on, and a request in progress (a wait), are never idle.
    idle_timeout: float = 60.0
    # Bytes the state dir's filesystem must keep free: below it the daemon launches nothing and
    # holds its studies until there is room again (0 = hold only once a write fails for space).
    min_free_disk: int = 256 * 1024**2
    containment: str = "auto"  # auto | cgroup | subreaper (hpod.daemon.containment)
    # anyone: everyone on the socket reads every study; owner: its owner, root and admins only.
    read_access: str = "anyone"
    # The report's PNGs beside report.json (hpod.plots), where matplotlib is installed.
    report_plots: bool = True
    # The trials' TCP endpoint (hpod.daemon.tcp, docs/slurm.md): "host:port" to listen on, for
    # trials on other machines (a Slurm executor's jobs); None = none. Trial methods only.
    trial_tcp: str | None = None
    # What those trials connect to ("host:port"); None = trial_tcp, a wildcard host replaced
    # by this machine's name.
    trial_tcp_advertise: str | None = None
    # TLS on the endpoint: the certificate (chain) and its key, PEM; both or neither. Trials
    # check the daemon against the certificate file (HPOD_TLS_CA), so it must be on a path
    # they can read.
    trial_tls_cert: Path | None = None
    trial_tls_key: Path | None = None
    gpu: GpuConfig = field(default_factory=GpuConfig)

    # -- named constructors ---------------------------------------------------------------------

    @classmethod
    def defaults(cls) -> DaemonConfig:
        return cls()

    @classmethod
    def from_toml(
        cls, text: str, source: str = "<config>", *, base_dir: Path | str | None = None
    ) -> DaemonConfig:
        """Parse a configuration; relative paths are taken from ``base_dir`` when given."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"TOML syntax error: {exc}"], source=source) from None
        return cls.from_mapping(raw, source=source, base_dir=base_dir)

    @classmethod
    def from_file(cls, path: Path | str) -> DaemonConfig:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError([f"cannot read the file: {reason}"], source=str(p)) from None
        # A relative state_dir in /etc/hpod/hpod.toml means next to that file, not next to
        # wherever the daemon happened to be started (systemd starts it in /).
        return cls.from_toml(text, source=str(p), base_dir=p.resolve().parent)

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any],
        *,
        source: str = "<config>",
        base_dir: Path | str | None = None,
    ) -> DaemonConfig:
        problems: list[str] = []
        base = Path(base_dir) if base_dir is not None else None
        top = Section(raw, "", problems, _TOP_KEYS)
        values = top.values(_bound(_TOP_READERS, base))
        gpu = _read_gpu(raw.get("gpu", {}), problems)
        top.finish()
        problems += _tcp_problems(values)
        if problems:
            raise ConfigError(problems, source=source)
        return cls(**values, gpu=gpu)

    def with_overrides(self, **overrides: Any) -> DaemonConfig:
        """This configuration with command-line values laid over it; a None means "not given".

        Values go through the same checks as the file's (``stop_grace="30s"`` works), and
        relative paths are made absolute against the current folder, where the flag was typed.
        """
        problems: list[str] = []
        given = {
            key: str(value) if isinstance(value, Path) else value
            for key, value in overrides.items()
            if value is not None
        }
        flags = Section(given, "", problems, _TOP_KEYS)
        values = flags.values(_bound(_TOP_READERS, Path.cwd()))
        gpu = given.get("gpu")
        if isinstance(gpu, GpuConfig):
            values["gpu"] = gpu
        elif gpu is not None:
            flags.problem("gpu", f"expected a GpuConfig, got {type(gpu).__name__}")
        flags.finish()
        if problems:
            raise ConfigError(problems, source="the command line")
        return dataclasses.replace(self, **values)

    # -- resolved values ------------------------------------------------------------------------

    def resolved_socket(self) -> Path:
        return Path(self.socket) if self.socket else default_socket_path()

    def resolved_trial_socket(self) -> Path:
        return Path(self.trial_socket) if self.trial_socket else self.resolved_socket()

    def resolved_state_dir(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir()

    def resolved_cpu_slots(self) -> int:
        if self.cpu_slots is not None:
            return self.cpu_slots
        # The CPUs this process may run on, which a cgroup or taskset can make fewer than all.
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, None kept as null (what `hpod serve` logs at start-up)."""
        return {
            "socket": self.socket,
            "trial_socket": self.trial_socket,
            "state_dir": str(self.state_dir) if self.state_dir is not None else None,
            "cpu_slots": self.cpu_slots,
            "stop_grace": self.stop_grace,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "durability": self.durability,
            "socket_mode": f"{self.socket_mode:04o}",
            "socket_group": self.socket_group,
            "admins": list(self.admins),
            "max_connections": self.max_connections,
            "max_connections_per_uid": self.max_connections_per_uid,
            "idle_timeout": self.idle_timeout,
            "min_free_disk": self.min_free_disk,
            "containment": self.containment,
            "read_access": self.read_access,
            "report_plots": self.report_plots,
            "trial_tcp": self.trial_tcp,
            "trial_tcp_advertise": self.trial_tcp_advertise,
            "trial_tls_cert": None if self.trial_tls_cert is None else str(self.trial_tls_cert),
            "trial_tls_key": None if self.trial_tls_key is None else str(self.trial_tls_key),
            "gpu": self.gpu.to_dict(),
        }


# -- readers: each takes (value, base_dir) and returns the parsed value or raises ValueError -----
# (a Section makes the ValueError that key's problem, so every bad key is listed at once)

Reader = Callable[[Any, Path | None], Any]


def _bound(readers: Mapping[str, Reader], base: Path | None) -> dict[str, Callable[[Any], Any]]:
    """Each reader with ``base`` (where relative paths start) filled in, as Section.values wants."""

    def bind(read: Reader) -> Callable[[Any], Any]:
        return lambda value: read(value, base)

    return {key: bind(read) for key, read in readers.items()}


def _optional_string(value: Any) -> str | None:
    # TOML has no null: an empty string is how the file says "the default".
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)}")
    return value.strip() or None


def _path_text(value: Any, base: Path | None) -> str | None:
    text = _optional_string(value)
    if text is None:
        return None
    if "\0" in text:
        raise ValueError("a path cannot contain a NUL character")
    expanded = os.path.expanduser(text)
    if base is not None and not os.path.isabs(expanded):
        expanded = os.path.normpath(os.path.join(base, expanded))
    return expanded


def _socket(value: Any, base: Path | None) -> str | None:
    path = _path_text(value, base)
    if path is not None:
        size = len(os.fsencode(path))
        if size > MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"{path!r} is {size} bytes; a Unix socket path may have at most "
                f"{MAX_SOCKET_PATH_BYTES}: choose a shorter one"
            )
    return path


def _state_dir(value: Any, base: Path | None) -> Path | None:
    path = _path_text(value, base)
    return Path(path) if path is not None else None


def _integer(value: Any, *, minimum: int, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected {what}, got {type_name(value)}")
    if value < minimum:
        raise ValueError(f"must be >= {minimum}, got {value}")
    return value


def _cpu_slots(value: Any, base: Path | None) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected a positive integer or "auto", got {type_name(value)}')
    return _integer(value, minimum=1)


def _duration(value: Any, *, path: str, positive: bool) -> float:
    seconds = parse_duration(value, path)
    if positive and seconds <= 0:
        raise ValueError(f"must be more than 0 seconds, got {value!r}")
    return seconds


def _one_of(options: Sequence[str]) -> Reader:
    def read(value: Any, base: Path | None) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected one of {', '.join(options)}, got {type_name(value)}")
        word = value.strip().lower()
        if word == "warn" and "warning" in options:
            word = "warning"  # the spelling everyone types
        if word not in options:
            raise ValueError(
                f"{value!r} is not one of {', '.join(options)}{did_you_mean(word, options)}"
            )
        return word

    return read


def _socket_mode(value: Any, base: Path | None) -> int:
    # TOML writes octal as 0o660; a string "0660" or "660" is what people copy from chmod.
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise ValueError(f'{value!r} is not an octal mode such as "0660"') from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ValueError(f'expected an octal mode such as 0o660 or "0660", got {type_name(value)}')
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a permission mode between 0000 and 0777")
    if mode & 0o600 != 0o600:
        raise ValueError(f"{mode:04o} would keep the daemon's own user from the socket (need u+rw)")
    return mode


def _socket_group(value: Any, base: Path | None) -> str | None:
    name = _optional_string(value)
    if name is None:
        return None
    # Checked now so that a typo fails at start-up, not when the socket is chown'ed.
    try:
        if name.isdigit():
            grp.getgrgid(int(name))
        else:
            grp.getgrnam(name)
    except KeyError:
        raise ValueError(f"no group {name!r} on this machine") from None
    return name


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type_name(value)}")
    return value


def _admins(value: Any, base: Path | None) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of user names or uids, got {type_name(value)}")
    uids: list[int] = []
    errors: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            uid = item
        elif isinstance(item, str) and item.strip():
            name = item.strip()
            try:
                uid = int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
            except KeyError:
                errors.append(f"[{i}] no user {name!r} on this machine")
                continue
        else:
            errors.append(f"[{i}] expected a user name or a uid >= 0, got {type_name(item)}")
            continue
        if uid not in uids:
            uids.append(uid)
    if errors:
        raise ValueError("; ".join(errors))
    return tuple(uids)


_TOP_READERS: dict[str, Reader] = {
    "socket": _socket,
    "trial_socket": _socket,
    "state_dir": _state_dir,
    "cpu_slots": _cpu_slots,
    "stop_grace": lambda v, b: _duration(v, path="stop_grace", positive=False),
    "log_level": _one_of(LOG_LEVELS),
    "log_format": _one_of(LOG_FORMATS),
    "durability": _one_of(DURABILITIES),
    "socket_mode": _socket_mode,
    "socket_group": _socket_group,
    "admins": _admins,
    "max_connections": lambda v, b: _integer(v, minimum=1),
    "max_connections_per_uid": lambda v, b: _integer(v, minimum=1),
    "idle_timeout": lambda v, b: _duration(v, path="idle_timeout", positive=False),
    "min_free_disk": lambda v, b: parse_size(v, "min_free_disk"),
    "containment": _one_of(CONTAINMENTS),
    "read_access": _one_of(READ_ACCESS),
    "report_plots": lambda v, b: _boolean(v),
    "trial_tcp": lambda v, b: _address(v),
    "trial_tcp_advertise": lambda v, b: _address(v),
    "trial_tls_cert": lambda v, b: _readable_file(v, b),
    "trial_tls_key": lambda v, b: _readable_file(v, b),
}


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 address) as (host, port); ValueError else."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f'{text!r} is not host:port (e.g. "0.0.0.0:7787")')
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"port {port} is not between 0 (any free port) and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return host, port


def _address(value: Any) -> str | None:
    text = _optional_string(value)
    if text is None:
        return None
    parse_address(text)
    return text


def _readable_file(value: Any, base: Path | None) -> Path | None:
    path = _path_text(value, base)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path!r} cannot be read")
    return Path(path)


def _tcp_problems(values: Mapping[str, Any]) -> list[str]:
    """The keys of the trials' TCP endpoint that only make sense together."""
    out: list[str] = []
    cert, key = values.get("trial_tls_cert"), values.get("trial_tls_key")
    if (cert is None) != (key is None):
        given, lacking = ("trial_tls_cert", "trial_tls_key")[:: 1 if cert is not None else -1]
        out.append(f"{lacking}: needed with {given} (TLS takes the certificate and its key)")
    if values.get("trial_tcp") is None:
        for name in ("trial_tcp_advertise", "trial_tls_cert", "trial_tls_key"):
            if values.get(name) is not None:
                out.append(f"{name}: set, but trial_tcp is not (no TCP endpoint to use it)")
    return out


# [gpu] is a table of its own, read by _read_gpu.
_TOP_KEYS = (*_TOP_READERS, "gpu")


def _gpu_allowed(value: Any, base: Path | None) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of GPU indices or UUIDs, got {type_name(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            text = str(item)
        elif isinstance(item, str) and item.strip():
            text = item.strip()
        else:
            raise ValueError(f"[{i}] expected a GPU index or UUID, got {type_name(item)}")
        if text in out:
            raise ValueError(f"[{i}] {text!r} is listed twice")
        out.append(text)
    return tuple(out)


_GPU_READERS: dict[str, Reader] = {
    "allowed": _gpu_allowed,
    "busy_policy": _one_of(BUSY_POLICIES),
    "min_free_memory_mib": lambda v, b: _integer(v, minimum=0),
    "refresh_seconds": lambda v, b: _duration(v, path="gpu.refresh_seconds", positive=True),
}


def _read_gpu(raw: Any, problems: list[str]) -> GpuConfig:
    if not isinstance(raw, Mapping):
        problems.append(f"gpu: expected a [gpu] table, got {type_name(raw)}")
        return GpuConfig()
    sec = Section(raw, "gpu", problems, tuple(_GPU_READERS))
    values = sec.values(_bound(_GPU_READERS, None))
    sec.finish()
    return GpuConfig(**values)
