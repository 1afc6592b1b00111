"""The warm start's fork server: one pre-started interpreter per study, runs forked from it.

Run by the daemon (hpod.daemon.warm) as ``[<the command's python>, <this file>, '<json>']``, as
the study's owner, in its workdir, with the study's environment (no trial's contract, and
``CUDA_VISIBLE_DEVICES`` empty, so an import that touches CUDA finds no GPU). It is the user's
interpreter, not the daemon's: it sees the user's packages, and it is stdlib-only and imports
nothing of hpod (hpod may not be installed there); it loads the shim (hpod/daemon/shim.py, next
to it) by path, under a name no trial module can take.

It imports the study's ``warm_imports`` once, then checks that a fork is safe: one thread only
(a fork copies only the thread that forks; a lock another thread held stays locked in the child
forever) and no GPU device open (a CUDA context does not survive a fork). It tells the daemon
``{"ready": true}`` or why not, on the control socket (``control_fd``, a SOCK_SEQPACKET end),
and then, for each run, reads one request with five descriptors: the run's stdout and stderr
logs, the shim's argument pipe, its report pipe and its status file. It forks; the child is the
run's shim (its own session; the daemon moves it into the run's cgroup and stores it before it
sends the arguments, exactly as for a shim it starts itself), which forks the trial and runs the
trial's script or module in that child: no interpreter start, no import done twice. The server
answers with the shim's pid, and exits when the daemon's end closes.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import importlib.util
import json
import os
import pkgutil  # noqa: F401 - runpy.run_path imports it (and typing) at each run: here, once
import runpy
import signal
import socket
import sys
import threading
import traceback
import weakref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_hpod_warm_shim", os.path.join(_HERE, "shim.py"))
assert _spec is not None
assert _spec.loader is not None
shim = importlib.util.module_from_spec(_spec)
sys.modules["_hpod_warm_shim"] = shim
_spec.loader.exec_module(shim)

# Where the shim finds what the request passed it, in the forked shim.
STDOUT, STDERR, ARGS_FD, REPORT_FD, STATUS_FD = 1, 2, 3, 4, 5
# A run that imported at least this many modules after its fork is told so on its stderr: they
# were imported at every run's start (torch.optim imports torch._dynamo and sympy at the first
# optimizer: 800 modules, seconds of every resume), where warm_imports would do it once.
LATE_IMPORTS = 50


def late_imports(before: set[str], after: list[str], least: int = LATE_IMPORTS) -> str | None:
    """The line a run that imported ``least`` or more modules past its fork gets on its stderr,
    naming the packages most of them are in (a package the server had imported by its
    subpackage: torch._dynamo, not torch); None for fewer."""
    late = [name for name in after if name not in before]
    if len(late) < least:
        return None
    counts: dict[str, int] = {}
    for name in late:
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] in before and len(parts) > 1 else parts[0]
        counts[group] = counts.get(group, 0) + 1
    top = sorted(counts, key=lambda g: (-counts[g], g))[:3]
    return (
        f"hpod warm start: this run imported {len(late)} modules after its fork, most of them "
        f"under {', '.join(top)}: every run imports them again; naming them in [executor] "
        "warm_imports imports them once, in the fork server (docs/warm-start.md)"
    )


def fork_problem() -> str | None:
    """Why forking this process now would not be safe (None: it is)."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = threading.active_count()
    if threads > 1:
        return (
            f"the warm imports left {threads} threads running; a fork copies only one of them "
            '(numpy\'s OpenBLAS starts its pool at import: set OPENBLAS_NUM_THREADS = "1" in '
            "the study's env; see docs/warm-start.md)"
        )
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/nvidia") or target.startswith("/dev/dri"):
                return f"the warm imports opened a GPU device ({target}); no CUDA before the fork"
    except OSError:
        pass
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and getattr(cuda, "is_initialized", lambda: False)():
        return "the warm imports initialised CUDA; no CUDA before the fork"
    return None


def exit_code(code: Any) -> int:
    """The exit status of ``sys.exit(code)``, as the interpreter makes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def server_finalizers_off() -> None:
    """The finalizers (``weakref.finalize``) that the warm imports registered are the server's:
    a run does not call them at its exit. What they clean up is the server's, shared by every
    fork (a temporary folder made at import would be removed by the first run to end), and
    torch's 134 (one per operator library, each deregistering it) were 50-80 ms of each run's
    end. The run's own finalizers, and every ``atexit`` function, run as in any interpreter."""
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        with contextlib.suppress(Exception):
            finalizer.atexit = False


def run_trial(argv: list[str]) -> None:
    """The trial, in the forked child: what ``python [-u] script.py args`` or ``python [-u] -m
    module args`` would do from here on; never returns."""
    rest = list(argv[1:])
    if rest[:1] == ["-u"]:
        rest = rest[1:]
    code = 0
    interrupted = False
    before = set(sys.modules)
    server_finalizers_off()
    try:
        if rest[0] == "-m":
            sys.argv = [rest[1], *rest[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(rest)
            sys.path[0] = os.path.dirname(os.path.realpath(rest[0]))
            runpy.run_path(rest[0], run_name="__main__")
    except SystemExit as exc:
        code = exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:
        traceback.print_exc()
        code = 1
    # The interpreter's own ending: non-daemon threads, then atexit, then the buffers.
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    with contextlib.suppress(BaseException):
        told = late_imports(before, list(sys.modules))
        if told is not None:
            print(told, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if interrupted:
        # As the interpreter does for an uncaught KeyboardInterrupt: killed by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def start_trial(args: dict[str, Any]) -> int:
    """The shim's way to start a warm trial: fork, and in the child lead a group of its own,
    take the trial's folder and environment, close the shim's descriptors and run the trial
    (an error before it runs comes back as the OSError it was)."""
    argv = [str(a) for a in args["argv"]]
    env = {str(k): str(v) for k, v in (args.get("env") or {}).items()}
    cwd = str(args["cwd"])
    own = [int(fd) for fd in (args.get("report_fd"), args.get("status_fd")) if fd is not None]

    def child(err_write: int) -> None:  # pragma: no cover - the trial's process
        for sig in (*shim.FORWARDED, shim.KILL_ALL):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        for fd in own:
            os.close(fd)
        os.close(err_write)  # set up: the shim goes on
        run_trial(argv)

    pid: int = shim.fork_with(child)
    return pid


def be_shim(control: socket.socket, fds: list[int]) -> None:
    """The forked child: the run's shim; never returns."""
    code = 1
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its trial
        os.setsid()
        for fd, target in zip(fds, (STDOUT, STDERR, ARGS_FD, REPORT_FD, STATUS_FD), strict=True):
            if fd != target:
                os.dup2(fd, target)
        for fd in fds:
            if fd not in (STDOUT, STDERR, ARGS_FD, REPORT_FD, STATUS_FD):
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir("/")
        args = shim.read_args(ARGS_FD)
        args.update(report_fd=REPORT_FD, status_fd=STATUS_FD, cgroup=None)
        args.pop("user", None)  # already the owner: this process is the owner's
        code = shim.Shim(start=start_trial).run(args)
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    os._exit(code)


def serve(control: socket.socket) -> None:
    # Each shim exits on its own; nobody here waits for them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Everything the imports made goes into the collector's permanent generation: a run's
    # collections then never walk it. Walked, each of a fork's first full collections wrote
    # to every page of the imports' objects (copying each) and took 0.5 s of a digits run's
    # start with torch and sklearn imported (gc.freeze's own use: a fork without exec).
    gc.freeze()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, 8)
        except OSError:
            return
        if not data:
            return  # the daemon is gone (or closed us): the runs go on without us
        if len(fds) != 5:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": f"expected 5 descriptors, got {len(fds)}"}).encode())
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": f"fork: {exc.strerror}"}).encode())
            continue
        if pid == 0:  # pragma: no cover - the shim
            be_shim(control, fds)
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"pid": pid}).encode())


def main(argv: list[str]) -> int:
    conf = json.loads(argv[1])
    control = socket.socket(fileno=int(conf["control_fd"]))
    # The trial's own folder first on the path (its sibling modules), never this one.
    sys.path[0] = str(conf.get("path0") or os.getcwd())
    problem = None
    for name in conf.get("imports", []):
        try:
            importlib.import_module(name)
        except BaseException as exc:
            problem = f"import {name}: {type(exc).__name__}: {exc}"
            break
    if problem is None:
        problem = fork_problem()
    control.send(json.dumps({"ready": problem is None, "why": problem}).encode())
    if problem is not None:
        return 1
    serve(control)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
