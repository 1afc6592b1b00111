"""The daemon's lifecycle: open, serve, shut down (uvicorn's ``startup`` / ``main_loop`` /
``shutdown``). It is the one composition root: it builds the store, the GPU pool, the fitter, the
trials and studies services and the wire methods, and wires them together; it decides nothing.

One anyio task group holds the socket servers, the signal watcher and the fitter; a second one,
inside it, holds the dispatcher, the runs and the studies' timers, so that on shutdown every
trial is stopped and recorded before the servers go away.
"""

from __future__ import annotations

import contextlib
import gc
import grp
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from hpod import __version__
from hpod.daemon import notify
from hpod.daemon.config import DaemonConfig
from hpod.daemon.connections import ConnectionLimits
from hpod.daemon.containment import Containment
from hpod.daemon.disk import release_reserve
from hpod.daemon.gpus import DevicePool, NvmlUnavailable, discover, load_nvml
from hpod.daemon.methods import Methods
from hpod.daemon.runtime import RunState, StudyRuntime
from hpod.daemon.server import Server
from hpod.daemon.statelock import StateLock
from hpod.daemon.statetree import prepare_state_dir
from hpod.daemon.store import Store
from hpod.daemon.studies import Studies
from hpod.daemon.tcp import (
    REMOTE,
    TlsFiles,
    TrialEndpoint,
    advertised,
    trial_address,
    trial_server,
)
from hpod.daemon.trials import Trials
from hpod.errors import HpodError
from hpod.fit.fitter import Fitter

log = structlog.get_logger("hpod.daemon")


# The youngest generation's collection threshold (Python's default: 700).
GC_THRESHOLD = 20_000


class Daemon:
    def __init__(self, config: DaemonConfig, *, socket_path: str, state_dir: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.trial_socket = str(config.trial_socket) if config.trial_socket else socket_path
        self.state_dir = state_dir
        self.started_at = time.monotonic()
        self.pool = DevicePool(
            config.resolved_cpu_slots(),
            config.gpu,
            cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        self._nvml: Any = None
        self.registry: dict[str, StudyRuntime] = {}
        self._shutdown = anyio.Event()
        # SIGHUP: re-execute in place (an upgrade): the trials stay this process's children.
        self._reexec = anyio.Event()
        self._stopping = anyio.Event()  # either of the two
        # Changes at each start and each re-exec (`hpodctl ping`): the pid alone stays the same
        # across a re-exec, this says a new image took over.
        self.generation = secrets.token_hex(6)
        self._store: Store | None = None
        self._studies: Studies | None = None
        self._trials: Trials | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, "the store is open while the daemon serves"
        return self._store

    @property
    def studies(self) -> Studies:
        assert self._studies is not None, "the services exist while the daemon serves"
        return self._studies

    def request_shutdown(self) -> None:
        self._shutdown.set()
        self._stopping.set()

    def request_reexec(self) -> None:
        self._reexec.set()
        self._stopping.set()

    # -- lifetime --------------------------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # 0711 root's (0700 a user's), studies/ too; each study folder is its owner's.
        prepare_state_dir(self.state_dir)
        # One daemon per state dir, before the store opens and until it is closed: two on one
        # store each resumed the same interrupted trial (the socket probe below only sees a
        # daemon on the same socket).
        lock = StateLock.acquire(self.state_dir)
        try:
            for path in {self.socket_path, self.trial_socket}:
                _check_not_already_served(path)
            # On a full disk SQLite cannot even open the store (it sizes its -shm file): the
            # reserve the last run kept makes room for that, and the studies come up held.
            release_reserve(self.state_dir, self.config.min_free_disk)
            self._store = Store.open(
                self.state_dir,
                durability="fsync" if self.config.durability == "fsync" else "normal",
            )
        except BaseException:
            lock.release()
            raise
        try:
            # The signal receiver first: a SIGTERM that comes right after READY=1 (or during the
            # start-up) is a graceful stop, never the default action's sudden death.
            # SIGHUP re-executes in place (an upgrade), keeping the trials running.
            stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            with anyio.open_signal_receiver(*stops) as signals:
                await self._startup()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_signals, signals)
                    await self._main_loop(tg, task_status)
                    tg.cancel_scope.cancel()
        finally:
            self.store.close()
            lock.release()
            for path in {self.socket_path, self.trial_socket}:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if self._nvml is not None:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
        log.info("stopped")

    async def _startup(self) -> None:
        await self._open_gpus()
        self.fitter = Fitter(self._wake_dispatcher, flag_dir=self.state_dir)
        # A cgroup per run where one can be made, else the shim's subreaper (ContainmentUnavailable
        # for containment = "cgroup" where none can): before any run is adopted or started.
        self.containment = Containment.discover(self.config.containment, self.state_dir)
        log.info("containment", **self.containment.describe())
        self._trials = Trials(
            self.config,
            self.pool,
            self.store,
            self.registry,
            trial_socket=self.trial_socket,
            containment=self.containment,
        )
        self._studies = Studies(
            self.config, self.store, self.state_dir, self.fitter, self.pool, self._trials
        )
        await self._studies.restore()
        # What the restore built lives as long as its studies do: out of the collector's
        # reach, a full collection does not walk it again and again (64 ms of the loop a time
        # with a 10,000-trial study). Freed objects are still freed; only cycles among them wait.
        gc.collect()
        gc.freeze()
        # And fewer collections: at the default 700 allocations, a page of trial views (a few
        # thousand objects alive while it is built) is promoted to the oldest generation and
        # makes its full collections come often, 55-85 ms of the loop each with a 10,000-trial
        # study's indexes in it; at 20,000 it is freed before a collection sees it.
        gc.set_threshold(GC_THRESHOLD, 20, 100)

    def _wake_dispatcher(self) -> None:
        if self._trials is not None:
            self._trials.wake()

    async def _main_loop(
        self, tg: anyio.abc.TaskGroup, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        assert self._trials is not None
        methods = Methods(
            self.studies,
            self._trials,
            self.pool,
            self.fitter,
            self.config,
            started_at=self.started_at,
            about={
                "pid": os.getpid(),
                "generation": self.generation,
                "containment": self.containment.describe(),
            },
        )
        limits = ConnectionLimits(
            max_connections=self.config.max_connections,
            max_per_uid=self.config.max_connections_per_uid,
            idle_timeout=self.config.idle_timeout or None,
            slots=self.pool.size,
            running_trials=self._running_trials,
        )
        server = Server(
            methods.table(),
            answering=methods.answering(),
            started_at=self.started_at,
            limits=limits,
        )
        tg.start_soon(self.fitter.run)
        endpoint = await self._open_trial_tcp(methods)
        if endpoint is not None:
            tg.start_soon(endpoint.serve)
        listeners = [
            await self._listen(path) for path in sorted({self.socket_path, self.trial_socket})
        ]
        async with contextlib.AsyncExitStack() as stack:
            for listener in listeners:
                await stack.enter_async_context(listener)
                # Server.serve, not listener.serve: a failed accept() (EMFILE) is backed off there,
                # where anyio's ends the task group and the daemon.
                tg.start_soon(server.serve, listener)
            async with anyio.create_task_group() as trial_tg:
                self._trials.tg = trial_tg
                trial_tg.start_soon(self._trials.dispatch)
                trial_tg.start_soon(self._trials.watch_disk)
                if self.pool.nvml:
                    # In the outer group: cancelled, not awaited, at shutdown.
                    tg.start_soon(self._refresh_gpus)
                self.studies.start_watching()
                self._trials.start_adopted()
                log.info(
                    "serving",
                    socket=self.socket_path,
                    trial_socket=self.trial_socket,
                    state_dir=str(self.state_dir),
                    slots=self.pool.size,
                    gpus=[g.uuid for g in self.pool.gpus],
                    studies=len(self.registry),
                    version=__version__,
                    pid=os.getpid(),
                    generation=self.generation,
                )
                notify.ready()
                task_status.started()
                await self._stopping.wait()
                if self._reexec.is_set() and not self._shutdown.is_set():
                    await self._reexec_now()  # never returns
                notify.stopping()
                await self.studies.shutdown()
            # A clean stop (a re-exec never comes here): every run's task has ended, and removed
            # its cgroup; the daemon's own subtree goes too, unless a run is still in it.
            await anyio.to_thread.run_sync(self.containment.release)
            # The servers go before their sockets close, so no accept sees a closed listener.
            tg.cancel_scope.cancel()

    async def _open_trial_tcp(self, methods: Methods) -> TrialEndpoint | None:
        """The trials' TCP endpoint (trial_tcp), bound and ready to serve; None without one."""
        config = self.config
        if config.trial_tcp is None:
            return None
        # Its own caps: every TCP peer is one "uid" (hpod.daemon.tcp.REMOTE), so the per-uid
        # cap is the overall one, plus one connection for each running trial.
        limits = ConnectionLimits(
            max_connections=config.max_connections,
            max_per_uid=config.max_connections,
            idle_timeout=config.idle_timeout or None,
            slots=self.pool.size,
            running_trials=lambda: {REMOTE.uid: sum(len(s.runs) for s in self.registry.values())},
        )
        tls = (
            TlsFiles(config.trial_tls_cert, config.trial_tls_key)
            if config.trial_tls_cert is not None and config.trial_tls_key is not None
            else None
        )
        server = trial_server(
            methods.table(), methods.answering(), started_at=self.started_at, limits=limits
        )
        endpoint = TrialEndpoint(server, config.trial_tcp, tls)
        try:
            await endpoint.open()
        except OSError as exc:
            raise HpodError(f"cannot listen on trial_tcp {config.trial_tcp!r}: {exc}") from exc
        assert self._trials is not None
        self._trials.trial_address = trial_address(
            advertised(endpoint.bound, config.trial_tcp_advertise), tls
        )
        log.info("trial_tcp", bound=endpoint.bound, advertised=self._trials.trial_address)
        return endpoint

    def _running_trials(self) -> dict[int, int]:
        """Running trials by the uid their process runs as (a root daemon's: the owner's)."""
        me = os.geteuid()
        counts: dict[int, int] = {}
        for study in self.registry.values():
            if study.runs:
                uid = study.owner if me == 0 else me
                counts[uid] = counts.get(uid, 0) + len(study.runs)
        return counts

    async def _listen(self, path: str) -> anyio.abc.SocketListener:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        listener = await anyio.create_unix_listener(path, mode=self.config.socket_mode)
        if self.config.socket_group:
            # The members of socket_group get in through the file's group bits (socket_mode).
            group = self.config.socket_group
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        return listener

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            # Record only: the main task does the stopping (or the re-exec).
            log.info("signal", signal=signal.Signals(signum).name)
            if signum == signal.SIGHUP:
                self.request_reexec()
            else:
                self.request_shutdown()

    # -- upgrade in place ------------------------------------------------------------------------

    async def _reexec_now(self) -> None:
        """Execute hpod again in this process (SIGHUP; the unit's ExecReload): the trials, its
        children, keep running, and the new image adopts them as after a crash, with nothing
        lost: launches are let finish, the clocks saved, the store's commits drained first.

        Nothing is unwound: the run tasks' clean-up would stop their trials. exec(2) drops the
        sockets, the state lock and the threads (all close-on-exec); reporters reconnect and
        re-send (hpod.trial). If the exec fails the daemon exits 1, leaving the trials to the
        next start."""
        assert self._trials is not None
        self._trials.closed = True  # nothing new starts
        with anyio.move_on_after(self.config.stop_grace):
            # STARTING lasts until the started process's identity is stored.
            while any(
                r.state is RunState.STARTING
                for s in self.registry.values()
                for r in s.runs.values()
            ):
                await anyio.sleep(0.01)  # a launch in flight takes milliseconds
        await self.studies.save_all_clocks()
        await self._trials.disk.flush()
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("reexec", argv=argv, generation=self.generation, pid=os.getpid())
        await self.fitter.worker.aclose()  # else a zombie of the new image's for ever
        self.store.close()
        try:
            os.execv(sys.executable, argv)
        except OSError as exc:
            # The store is closed; unwinding would stop every trial. Exit at once instead: the
            # trials keep running and the next start (Restart=on-failure) adopts them.
            log.error("reexec_failed", error=str(exc))
            os._exit(1)

    # -- GPUs ------------------------------------------------------------------------------------

    def _ours(self) -> Any:
        """A test for pids hpod started: the daemon, and anything in a trial's session."""
        leaders = {
            r.proc.pid
            for s in self.registry.values()
            for r in s.runs.values()
            if r.proc is not None
        }
        me = os.getpid()

        def ours(pid: int) -> bool:
            if pid == me or pid in leaders:
                return True
            try:
                return os.getsid(pid) in leaders
            except OSError:
                return False

        return ours

    async def _open_gpus(self) -> None:
        try:
            self._nvml = await anyio.to_thread.run_sync(load_nvml)
            gpus = await anyio.to_thread.run_sync(discover, self._nvml, self._ours())
        except (NvmlUnavailable, Exception) as exc:  # a broken driver is no reason not to serve
            self._nvml = None
            log.info("no_gpus", reason=str(exc), cpu_slots=self.pool.size)
            return
        self.pool.nvml = True
        self.pool.update(gpus)
        if not self.pool.has_gpus:
            log.info(
                "no_gpus",
                reason="NVML sees no GPU that hpod may use",
                seen=[g.uuid for g in gpus],
                cpu_slots=self.pool.size,
            )
            return
        log.info("gpus", gpus=[g.to_dict() for g in self.pool.gpus])

    async def _refresh_gpus(self) -> None:
        while self.studies.accepting:
            await anyio.sleep(self.config.gpu.refresh_seconds)
            try:
                gpus = await anyio.to_thread.run_sync(discover, self._nvml, self._ours())
            except Exception as exc:
                log.warning("gpu_refresh_failed", error=str(exc))
                continue
            self.pool.update(gpus)
            self._wake_dispatcher()


def _check_not_already_served(path: str) -> None:
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return  # a stale socket from a daemon that died: safe to replace
    finally:
        probe.close()
    raise HpodError(
        f"another hpod is already serving on {path}; stop it first or choose another --socket"
    )
