"""The per-trial shim: the one process the daemon starts, watches and signals for a run.

Run as ``[sys.executable, "-I", "-S", <this file>, '{"run": ..., "args_fd": A, "report_fd": R}']``
with an empty environment: isolated mode, no site, and stdlib-only on purpose, so that nothing a
user put on PYTHONPATH (or in a .pth file) runs in a process that may be root. It imports nothing
of hpod, and the daemon never imports it. Its environment is empty, because the trial's (the
submitter's) may name libraries for the loader (LD_LIBRARY_PATH, LD_PRELOAD) that root's
interpreter must not load; and its command line names only the run, because anyone may read it
(/proc/<pid>/cmdline) and the trial's environment holds its token.

It is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever the trial starts and orphans, a
``setsid()`` daemon included, is reparented to it rather than to init, so when the trial's leader
exits it can kill and reap every descendant. Placed in the run's cgroup (when the daemon made
one) before it starts the trial, so the trial is in it from its first instruction. It outlives a
daemon that dies (it is in its own session), and writes the trial's exit status to a file of the
daemon's, which a restarted daemon reads.

The arguments, one JSON object read from the pipe ``args_fd`` to its end: ``argv``, ``cwd``,
``env`` (the trial's; absent: the shim's own), ``status_path``, and optional ``cgroup``,
``user``, ``group``, ``extra_groups``. On ``report_fd`` the shim tells the daemon one line,
``{"trial_pid": N, "trial_start_ticks": T}`` or the start error. stdout/stderr are the shim's
own, which the daemon pointed at the trial's log files.

Signals: SIGTERM, SIGINT and SIGHUP are forwarded to the trial's process group; SIGUSR1 means
"kill it all": SIGKILL to the group and to every descendant.
"""

from __future__ import annotations

# Each import here is paid at every run's start, before the trial can start: only modules built
# into the interpreter (os is loaded already; _signal is signal without its enum classes, marshal
# reads the daemon's arguments), and ctypes for the one prctl. json is imported only for
# arguments written as JSON (by hand, in tests); subprocess not at all (fork and exec below).
import ctypes
import marshal
import os
import sys
import time

# typing is one import more at each run's start, for names the checker alone reads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any
else:
    import _signal as signal

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
KILL_ALL = signal.SIGUSR1
MAX_FD = os.sysconf("SC_OPEN_MAX")


class Shim:
    def __init__(self, start: Callable[[dict[str, Any]], int] | None = None) -> None:
        # How the trial is started: fork and exec (here), or, for a warm start, fork and run
        # it in the forked interpreter (hpod/daemon/forkserver.py).
        self.start = spawn if start is None else start
        self.trial_pid: int | None = None
        # Set once the leader is reaped: from then on its pid (so its group id) may be reused by a
        # stranger, and the group is never signalled by id again.
        self.leader_reaped = False
        self.pending: list[int] = []  # signals that came before the trial existed

    # -- signals ---------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: object) -> None:
        if self.trial_pid is None:
            self.pending.append(signum)
            return
        if signum == KILL_ALL:
            self.kill_group(signal.SIGKILL)
            kill_descendants()
        else:
            self.kill_group(signum)

    def kill_group(self, sig: int) -> None:
        if self.trial_pid is None or self.leader_reaped:
            return
        try:  # noqa: SIM105 - contextlib is more than the shim needs to import
            # The leader is alive or an unreaped zombie of ours: the group id is still its own.
            os.killpg(self.trial_pid, sig)
        except ProcessLookupError:
            pass

    # -- the run ---------------------------------------------------------------------------------

    def run(self, args: dict[str, Any]) -> int:
        report_fd = int(args["report_fd"])
        set_subreaper()
        for sig in (*FORWARDED, KILL_ALL):
            # Handlers, not SIG_IGN: an ignored signal would stay ignored in the trial after exec.
            signal.signal(sig, self.on_signal)
        cgroup = args.get("cgroup")
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                    procs.write(str(os.getpid()))
            except OSError as exc:
                tell(report_fd, {**error_line(exc), "stage": "cgroup"})
                return 1
        try:
            pid = self.start(args)
        except (OSError, ValueError, TypeError) as exc:
            tell(report_fd, error_line(exc))
            return 1
        # Before the leader can be reaped (only this process reaps it): its start time, which
        # proves later that the pid is still the trial's.
        ticks = start_ticks(pid)
        self.trial_pid = pid
        tell(report_fd, {"trial_pid": pid, "trial_start_ticks": ticks})
        for signum in self.pending:
            self.on_signal(signum, None)
        self.pending.clear()

        # WNOWAIT: the exited leader stays a zombie, holding its pid and so its group id, while
        # the rest of the group is killed by that id.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        self.kill_group(signal.SIGKILL)
        returncode = wait_exit(pid)
        self.leader_reaped = True
        reap_everything()
        status = {"returncode": returncode, "ended_at": time.time()}
        if args.get("status_fd") is not None:
            write_status_fd(int(args["status_fd"]), status)
        else:
            write_status(args["status_path"], status)
        return 0


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        print(f"hpod shim: PR_SET_CHILD_SUBREAPER failed: {os.strerror(err)}", file=sys.stderr)


def error_line(exc: BaseException) -> dict[str, Any]:
    errno = exc.errno if isinstance(exc, OSError) else None
    strerror = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return {"errno": errno, "strerror": strerror, "exc": type(exc).__name__}


def spawn(args: dict[str, Any]) -> int:
    """Start the trial (what subprocess.Popen did, without its import): fork, and in the child
    lead a process group of its own, stdin from /dev/null, no descriptor but 0-2, the owner's
    groups and ids, the signals Python ignores (SIGPIPE, SIGXFSZ) back to their defaults, the
    folder, then exec ``argv[0]`` on the PATH of ``env``."""
    argv = [str(a) for a in args["argv"]]
    if not argv or not argv[0]:
        raise ValueError("empty command")
    env = args.get("env")
    env = dict(os.environ) if env is None else {str(k): str(v) for k, v in env.items()}
    cwd = str(args["cwd"])
    uid, gid, groups = args.get("user"), args.get("group"), args.get("extra_groups")

    def child(err_write: int) -> None:  # pragma: no cover - the child, until its exec
        for sig in (*FORWARDED, KILL_ALL, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.closerange(3, err_write)  # err_write itself is close-on-exec
        os.closerange(err_write + 1, MAX_FD)
        if uid is not None:
            if groups is not None:
                os.setgroups([int(g) for g in groups])
            if gid is not None:
                os.setregid(int(gid), int(gid))
            os.setreuid(int(uid), int(uid))
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)

    return fork_with(child)


def fork_with(child: Callable[[int], None]) -> int:
    """Fork a child that leads a process group of its own and runs ``child(err_write)``, which
    execs (or closes ``err_write`` and goes on to run the trial itself, never returning). An
    exception it raises before that comes back through the close-on-exec pipe ``err_write``
    and is raised here as the OSError it was (ValueError for any other)."""
    err_read, err_write = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(err_read)
            child(err_write)
        except BaseException as exc:
            num = exc.errno if isinstance(exc, OSError) and exc.errno else 0
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            os.write(err_write, f"{num}:{text}".encode(errors="replace"))
        os._exit(255)
    os.close(err_write)
    try:  # noqa: SIM105 - contextlib is more than the shim needs to import
        # The shell's way: the parent sets the group too, so that no signal sent to the group
        # right after this returns can find it not made yet.
        os.setpgid(pid, pid)
    except OSError:
        pass  # already exec'd (it made its group first), or already gone
    chunks = []
    try:
        while chunk := os.read(err_read, 4096):
            chunks.append(chunk)
    finally:
        os.close(err_read)
    if chunks:
        os.waitpid(pid, 0)
        said, text = b"".join(chunks).decode(errors="replace").split(":", 1)
        if int(said):
            raise OSError(int(said), text)
        raise ValueError(text)
    return pid


def wait_exit(pid: int) -> int:
    """Reap the trial's leader: Popen's returncode (negative: killed by that signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:  # pragma: no cover - PEP 475 retries it already
            continue


def _json(value: Any) -> str:
    """JSON for what the shim writes (ints, floats, strings, None, flat dicts), without json."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # a float's repr is JSON for every finite float
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch == '"' or ch == "\\" or ch < " ":
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json(str(k))}: {_json(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def tell(fd: int, line: dict[str, Any]) -> None:
    data = (_json(line) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass  # the daemon is gone: the run goes on, and its status file says how it ended
    finally:
        os.close(fd)


def start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields are counted after the last ')'.
    return int(stat.rsplit(b")", 1)[1].split()[19])


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[1])


def descendants() -> list[int]:
    """Every live descendant of this process, by walking parent links over /proc (the kernel's
    ``/proc/<pid>/task/<tid>/children`` is not built everywhere)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> None:
    for pid in descendants():
        try:  # noqa: SIM105 - contextlib is more than the shim needs to import
            # Parents come before their children in the list, and a process killed reaps
            # nothing more: each pid stays its process's until this shim reaps it, save one
            # reaped by a parent in the moment between the listing and that parent's kill.
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap_everything() -> None:
    """Kill and reap every descendant until there is none: what the trial left behind, whatever
    session or group it moved to, was reparented here (a subreaper) when its parent died."""
    while True:
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            # No child left, so no descendant either (each has an ancestor that is a child
            # here). The common case, a trial that left nothing, costs no walk of /proc: that
            # walk was most of the time from a trial's exit to the daemon hearing of it.
            return
        kill_descendants()
        time.sleep(0.01)  # a killed process takes a moment to exit; its orphans come here next


def write_status(path: str, status: dict[str, Any]) -> None:
    # Renamed into place, so a reader never sees half of it. Not fsynced: only a daemon of the
    # same boot reads it (a reboot changes the boot id and every run is resumed), and a daemon's
    # crash loses no page cache; two fsyncs were milliseconds on every trial's exit.
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, _json(status).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_status_fd(fd: int, status: dict[str, Any]) -> None:
    """A warm run's shim is the study owner's and cannot write in the daemon's folder: it writes
    into the empty file the daemon made and passed it, in one write (a reader that comes in
    between sees an empty file: no status yet)."""
    try:
        os.write(fd, _json(status).encode())
    finally:
        os.close(fd)


def read_args(fd: int) -> dict[str, Any]:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        # The daemon died before it sent what to start (it stores this shim first): start
        # nothing, so a restarted daemon that resumes the run does not race a copy of it.
        raise SystemExit(0)
    if data[:1] == b"{":
        import json  # arguments written by hand (tests); the daemon sends marshal

        args: dict[str, Any] = json.loads(data)
    else:
        args = marshal.loads(data)
    return args


def parse_fds(text: str) -> dict[str, int]:
    """The two numbers of the command line's object (``json.dumps`` of ``{"run": ..., "args_fd":
    A, "report_fd": R}``), read without json."""
    fds: dict[str, int] = {}
    for key in ("args_fd", "report_fd"):
        at = text.rindex(f'"{key}":') + len(key) + 3
        digits = text[at:].lstrip().split(",", 1)[0].split("}", 1)[0]
        fds[key] = int(digits)
    return fds


def main(argv: list[str]) -> int:
    os.chdir("/")  # the shim holds no user's folder
    fds = parse_fds(argv[1])
    args = read_args(fds["args_fd"])
    args["report_fd"] = fds["report_fd"]
    return Shim().run(args)


if __name__ == "__main__":
    code = main(sys.argv)
    # Straight out once the status is written: the interpreter's teardown took most of the
    # time from a trial's exit to the daemon hearing of it (bench/event_latency.py: 21 ms of
    # 24, median). Nothing is left to clean up: every descendant is reaped, every fd closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
