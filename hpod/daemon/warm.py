"""Warm starts: a pre-started interpreter per study, each run forked from it (docs/warm-start.md).

A study with ``[executor] warm_start = true`` gets, at its first run, a fork server
(hpod/daemon/forkserver.py) started with the command's own ``python``, as the study's owner, in
its workdir, with the study's environment, that imports ``warm_imports`` once. Each run's shim is
then forked from it instead of started (hpod.daemon.runner: ``TrialProcess.start(warm=...)``),
and the shim forks the trial, which runs the script in the forked interpreter: what a run costs
is two forks, not an interpreter's start and its imports.

A server that cannot start, or finds a fork unsafe after its imports (threads, CUDA), is logged
once (``warm_start_unavailable``) and the study's runs start cold, as without the key. The server
goes when its study has nothing running and is not running (ended, paused), and when the daemon
stops; it exits by itself once the daemon's end of its socket closes (a crash, a re-exec). The
runs do not need it once forked: a shim forked from it is watched, signalled and adopted exactly
as one the daemon started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from hpod.errors import HpodError

log = structlog.get_logger("hpod.daemon")

FORKSERVER = Path(__file__).resolve().with_name("forkserver.py")
# How long a server may take over its imports (torch takes seconds, a cold disk more).
READY_SECONDS = 300.0
# How long the server may take over its next answer (or to take the next request) before the
# run starts cold instead. Not a limit on one request: behind a burst of 1,000 starts the last
# one waits for every fork before its own, and a limit on that put them all on cold starts.
FORK_SECONDS = 10.0


class WarmUnavailable(HpodError):
    """The study's fork server could not fork this run (it starts cold)."""


@dataclass(frozen=True)
class WarmPlan:
    """What a study's fork server is started with."""

    study_id: str
    python: str  # the command's interpreter, resolved on the study's PATH
    path0: str  # sys.path[0] for the imports: the script's folder, or the workdir for -m
    imports: tuple[str, ...]
    workdir: Path
    env: Mapping[str, str]
    user: int | None  # the owner to run as (the daemon is root), or None: the daemon's uid


def plan_for(
    study_id: str,
    command: tuple[str, ...],
    workdir: Path,
    imports: tuple[str, ...],
    env: Mapping[str, str],
    user: int | None,
) -> WarmPlan:
    """The server's plan for a study whose command passed ``warm_command_problem``."""
    program = command[0]
    if os.sep in program:
        python = program if os.path.isabs(program) else str(workdir / program)
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise WarmUnavailable(f"{program!r} is not on the study's PATH")
        python = found
    rest = list(command[1:])
    if rest[:1] == ["-u"]:
        rest = rest[1:]
    if rest[:1] == ["-m"]:
        path0 = str(workdir)
    else:
        path0 = os.path.dirname(os.path.realpath(workdir / rest[0]))
    return WarmPlan(study_id, python, path0, imports, workdir, dict(env), user)


class WarmServer:
    """One study's fork server, as the daemon holds it: its process and its control socket.

    Fork requests are pipelined: each is sent at once and its answer is the next one not yet
    taken (the server answers in order, on a SOCK_SEQPACKET socket). A burst of starts queues
    its requests at the server, which forks them back to back; waiting for each answer before
    the next request cost two wake-ups of a busy machine per run (30 launches a second with 256
    sleep trials on a loaded 2-core machine)."""

    def __init__(
        self, plan: WarmPlan, proc: subprocess.Popen[bytes], control: socket.socket
    ) -> None:
        self.plan = plan
        self.proc = proc
        self.pid = proc.pid
        self.control = control
        self._send_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        # One per request sent and not yet answered, in the order sent: an answer is the oldest's.
        self._waiting: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self.closed = False

    async def fork(self, fds: list[int]) -> int:
        """Fork a shim for one run, handing it ``fds`` (stdout, stderr, the argument pipe's read
        end, the report pipe's write end, the status file); its pid."""
        try:
            answer = await self._ask(fds)
        except (OSError, ValueError) as exc:
            self.close()
            raise WarmUnavailable(f"the study's fork server did not answer: {exc}") from exc
        pid = answer.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise WarmUnavailable(f"the study's fork server could not fork: {answer.get('error')}")
        return pid

    async def _ask(self, fds: list[int]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        async with self._send_lock:
            if self.closed:
                raise WarmUnavailable("the study's fork server is closed")
            while True:
                try:
                    socket.send_fds(self.control, [b'{"fork": true}'], fds)
                    break
                except BlockingIOError:
                    # Requests queued: room once the server takes the next one.
                    with anyio.fail_after(FORK_SECONDS):
                        await anyio.wait_writable(self.control)
            # Sent: whatever becomes of this caller, the answer is this future's (a shim
            # forked for a caller gone meanwhile reads the end of its pipe and starts nothing).
            self._waiting.append(future)
        try:
            # Whoever holds the read lock reads the next answer, the oldest request's, until
            # this caller's own has come.
            while not future.done():
                async with self._read_lock:
                    if future.done():
                        break
                    if self.closed:
                        raise ValueError("its socket is closed")
                    try:
                        # The oldest request's answer: the server has had every earlier one
                        # answered, so the limit is on its work for this one alone.
                        with anyio.fail_after(FORK_SECONDS):
                            answer = await self._receive()
                    except (OSError, ValueError, anyio.ClosedResourceError) as exc:
                        self._fail(exc)
                        raise ValueError(str(exc) or type(exc).__name__) from exc
                    oldest = self._waiting.popleft()
                    if not oldest.done():  # done: its caller gave up (cancelled, timed out)
                        oldest.set_result(answer)
        except BaseException:
            if not future.done():
                future.cancel()  # its answer, when it comes, is taken and dropped
            raise
        return future.result()

    def _fail(self, exc: BaseException) -> None:
        """The socket broke: every request still waiting fails with it."""
        self.close()
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(ValueError(f"its socket broke: {exc}"))

    async def _receive(self) -> dict[str, Any]:
        while True:
            await anyio.wait_readable(self.control)
            try:
                data = self.control.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise ValueError("its socket closed")
            answer = json.loads(data)
            if not isinstance(answer, dict):
                raise ValueError(f"unexpected answer {answer!r}")
            return answer

    def close(self) -> None:
        """Let it go: it exits once its socket's end closes (SIGKILL if it is still there when
        :meth:`reap` gives up waiting)."""
        if not self.closed:
            self.closed = True
            self.control.close()

    async def reap(self, timeout: float = 5.0) -> None:
        self.close()
        with anyio.move_on_after(timeout):
            while self.proc.poll() is None:
                await anyio.sleep(0.05)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(self.proc.wait)


def _start_process(plan: WarmPlan, child_end: socket.socket) -> subprocess.Popen[bytes]:
    user_args: dict[str, Any] = {}
    if plan.user is not None and plan.user != os.geteuid():
        pw = pwd.getpwuid(plan.user)
        user_args = {
            "user": plan.user,
            "group": pw.pw_gid,
            "extra_groups": os.getgrouplist(pw.pw_name, pw.pw_gid),
        }
    conf = {
        "control_fd": child_end.fileno(),
        "imports": list(plan.imports),
        "path0": plan.path0,
    }
    return subprocess.Popen(
        [plan.python, str(FORKSERVER), json.dumps(conf)],
        cwd=plan.workdir,
        env=dict(plan.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        pass_fds=(child_end.fileno(),),
        **user_args,
    )


async def start_server(plan: WarmPlan) -> WarmServer:
    """Start the study's fork server and wait for its imports; WarmUnavailable if it cannot
    start or says a fork would not be safe."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        try:
            proc = await anyio.to_thread.run_sync(_start_process, plan, theirs)
        except (OSError, subprocess.SubprocessError, KeyError) as exc:
            ours.close()
            raise WarmUnavailable(f"could not start {plan.python}: {exc}") from exc
    finally:
        theirs.close()
    ours.setblocking(False)
    server = WarmServer(plan, proc, ours)
    try:
        with anyio.fail_after(READY_SECONDS):
            ready = await server._receive()
    except (OSError, TimeoutError, ValueError) as exc:
        await server.reap(0.5)
        raise WarmUnavailable(f"the fork server did not start: {exc}") from exc
    if not ready.get("ready"):
        await server.reap(0.5)
        raise WarmUnavailable(str(ready.get("why") or "the fork server refused"))
    return server


class WarmStarts:
    """The daemon's fork servers, one per warm study, started at the study's first run."""

    def __init__(self) -> None:
        self.servers: dict[str, WarmServer] = {}
        self._starting: dict[str, anyio.Event] = {}
        self.failed: dict[str, str] = {}  # study id: why its runs start cold

    async def server(self, plan_of: Any, study_id: str) -> WarmServer | None:
        """The study's server, started on first use (``plan_of()`` makes its plan); None when it
        cannot be had: the run starts cold."""
        while True:
            server = self.servers.get(study_id)
            if server is not None and not server.closed:
                return server
            if study_id in self.failed:
                return None
            waiting = self._starting.get(study_id)
            if waiting is None:
                break
            await waiting.wait()
        done = self._starting[study_id] = anyio.Event()
        try:
            plan: WarmPlan = plan_of()
            server = await start_server(plan)
            self.servers[study_id] = server
            log.info("warm_start_ready", study=study_id, pid=server.pid, imports=list(plan.imports))
            return server
        except WarmUnavailable as exc:
            self.failed[study_id] = exc.message
            log.warning("warm_start_unavailable", study=study_id, why=exc.message)
            return None
        finally:
            del self._starting[study_id]
            done.set()

    def give_up(self, study_id: str, why: str) -> None:
        """The study's server failed a fork: its runs start cold from now on."""
        server = self.servers.pop(study_id, None)
        if server is not None:
            server.close()
        self.failed[study_id] = why
        log.warning("warm_start_unavailable", study=study_id, why=why)

    def forget(self, study_id: str) -> WarmServer | None:
        """The study needs its server no more (nothing runs, it is not running): let it go."""
        self.failed.pop(study_id, None)
        server = self.servers.pop(study_id, None)
        if server is not None:
            server.close()
        return server

    def close_all(self) -> list[WarmServer]:
        servers = list(self.servers.values())
        for server in servers:
            server.close()
        self.servers.clear()
        return servers


def server_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A study's environment for its fork server: the trial's less its contract, and no GPU (an
    import that initialises CUDA finds none, instead of a context the fork would break)."""
    out = {k: v for k, v in env.items() if not k.startswith("HPOD_")}
    out["CUDA_VISIBLE_DEVICES"] = ""
    return out


__all__ = [
    "FORKSERVER",
    "WarmPlan",
    "WarmServer",
    "WarmStarts",
    "WarmUnavailable",
    "plan_for",
    "server_environment",
    "start_server",
]
