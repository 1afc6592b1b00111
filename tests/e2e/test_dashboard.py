"""`hpodctl dashboard` in a real headless Chromium (issue 16, item 4), against a real daemon.

- A study page shows the same best as `hpodctl best --json`, and a new report appears on it
  within 2 s without a reload (the page's load id stays the same).
- The token: no page or API call without it; a wrong Host header is refused.
- As root with `useradd`: a dashboard run as one user (a forked child that dropped to that
  user, so the daemon sees its uid) shows that user's study and not root's, under
  `read_access = "owner"`.

The screenshots go to a folder the test prints (and to $HPOD_SCREENSHOTS, when set)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpod.client import Client
from tests.e2e.browser import CHROMIUM, Browser, poll
from tests.e2e.conftest import DaemonHandle
from tests.e2e.specs import spec
from tests.reach import skip_unless_others_reach_the_checkout

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (scripts/system-packages.sh)"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("starlette", "uvicorn", "websockets")),
        reason="needs the dashboard extra and websockets (the test extra)",
    ),
]

# Live: a new report on the page within this many seconds of its commit.
LIVE_SECONDS = 2.0


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(tempfile.gettempdir()) / f"hpod-dashboard-screens-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def keep(shots: Path, path: Path) -> None:
    """A copy in $HPOD_SCREENSHOTS too, where the caller wants them."""
    extra = os.environ.get("HPOD_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


@contextlib.contextmanager
def dashboard(d: DaemonHandle) -> Iterator[str]:
    """`hpodctl dashboard` as this process's user; its URL (with the token)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpod.cli.hpodctl", "--socket", d.socket, "dashboard"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", line)
        assert match, f"hpodctl dashboard printed {line!r}"
        yield match.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def get(url: str, **headers: str) -> int:
    """The status of a GET (a redirect's own, not followed)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_study_page_shows_the_best_and_new_reports_live(daemon_factory: Any, shots: Path) -> None:
    d = daemon_factory(slots=2)
    # Slow trials, two at a time: a report every 0.3 s while the test watches.
    path = d.write_spec("live", spec("live", steps=25, delay=0.3, limits="max_concurrent = 2"))
    with Client(d.socket) as c, dashboard(d) as url, Browser() as b:
        sid = c.submit(path)["study"]
        base = url.split("/?")[0]
        # The token is needed: not without it, and not with another Host.
        assert get(f"{base}/") == 403
        assert get(f"{base}/api/studies") == 403
        assert get(url, Host="evil.example:80") == 403
        assert get(url) == 303  # to the same page without the token, with it as a cookie

        b.goto(url)  # sets the cookie, and drops the token from the address
        b.until(f"document.querySelector('tr[data-study=\"{sid}\"]') !== null", 10, "the study row")
        assert "token" not in b.eval("location.href")
        b.screenshot(shots / "studies.png")

        b.goto(f"{base}/study/{sid}")
        load_id = b.until("window.hpodRefreshes > 0 && window.hpodLoadId", 10, "the study page")
        b.until("document.getElementById('live').className === 'on'", 10, "the event stream")
        # A report the daemon commits from now on shows up on the page within LIVE_SECONDS.
        last_shown = "Number(document.getElementById('reports').dataset.lastReport)"
        for _ in range(3):
            shown = int(b.eval(last_shown))
            page = poll(lambda: c.curves(sid, after=shown, limit=1)["points"], 30, "a report")  # noqa: B023
            committed, newest = time.monotonic(), page[0]["id"]
            b.until(f"{last_shown} >= {newest}", LIVE_SECONDS + 5, f"report {newest} shown")
            took = time.monotonic() - committed
            print(f"report {newest} on the page {took:.2f}s after the daemon had it")
            assert took < LIVE_SECONDS
        b.screenshot(shots / "study-running.png")
        assert b.eval("window.hpodLoadId") == load_id  # live, not reloaded

        # Once it has ended: the page says so by itself, and its best is hpodctl best's.
        assert c.wait(sid, timeout=120)["state"] == "completed"
        b.until("document.getElementById('state').textContent === 'completed'", 10, "the end")
        best = d.ctl_json("best", sid)
        shown_best = b.until(
            "(() => { const v = document.querySelector('#best .value');"
            " return v && v.dataset.objective ? {...v.dataset} : null; })()",
            10,
            "the best",
        )
        assert int(shown_best["trial"]) == best["trial"]
        assert float(json.loads(shown_best["objective"])) == best["objective"]
        assert b.eval("window.hpodLoadId") == load_id
        b.screenshot(shots / "study-ended.png")

        b.goto(f"{base}/study/{sid}/trial/{best['trial']}")
        b.until("document.getElementById('config') && document.getElementById('log')"
                " && window.hpodRefreshes > 0", 10, "the trial page")  # fmt: skip
        config = b.eval("document.getElementById('config').textContent")
        for key, value in best["config"].items():
            assert key in config
            assert f"{value:g}" in config
        assert "run started" in b.eval("document.getElementById('log').textContent")
        b.screenshot(shots / "trial.png")
    for name in ("studies.png", "study-running.png", "study-ended.png", "trial.png"):
        keep(shots, shots / name)


# -- another user's study --------------------------------------------------------------------


@pytest.fixture(scope="module")
def users() -> Iterator[Any]:
    """Two throwaway users (tests/daemon/test_hostile_users.py makes them); root only."""
    if os.geteuid() != 0:
        pytest.skip("needs root: makes throwaway users with useradd")
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd")
    skip_unless_others_reach_the_checkout()
    from tests.daemon.test_hostile_users import throwaway_users

    with throwaway_users() as made:
        yield made


def drop_to(user: Any) -> None:
    os.setgroups(os.getgrouplist(user.name, user.gid))
    os.setgid(user.gid)
    os.setuid(user.uid)


def warm_dashboard(socket_path: str, sid: str) -> None:
    """One run of the dashboard in this process, every route asked once: the modules it
    imports as it serves are loaded before a child drops root (this interpreter's own
    files may be where the user cannot read them)."""
    import uvicorn

    from hpod.cli.dashboard import make_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until the server accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(socket_path, "t", port=port), http="h11", ws="none", lifespan="off",
        log_level="warning", loop="asyncio",
    )  # fmt: skip
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        base = f"http://127.0.0.1:{port}"
        poll(lambda: get(f"{base}/?token=t") == 303, 10, "the warm-up dashboard")
        for path in ("/api/studies", f"/api/study/{sid}", f"/api/study/{sid}/trial/0",
                     "/static/dashboard.js", "/nothing"):  # fmt: skip
            get(f"{base}{path}?token=t")
        with urllib.request.urlopen(f"{base}/api/events?token=t&tail=1", timeout=10) as r:
            r.readline()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not errors, errors


@contextlib.contextmanager
def dashboard_as(user: Any, socket_path: str) -> Iterator[str]:
    """The dashboard served by a forked child running as ``user``; its URL."""
    import uvicorn

    from hpod.cli.dashboard import make_app

    token = secrets.token_urlsafe(16)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until the server accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(socket_path, token, port=port), http="h11", ws="none", lifespan="off",
        log_level="warning", loop="asyncio", timeout_graceful_shutdown=1,
    )  # fmt: skip
    config.load()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            drop_to(user)
            uvicorn.Server(config).run(sockets=[sock])
            code = 0
        finally:
            os._exit(code)
    sock.close()
    try:
        yield f"http://127.0.0.1:{port}/?token={token}"
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)


def submit_as(user: Any, socket_path: str, text: str, base: Path) -> str:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read)
            drop_to(user)
            with Client(socket_path) as c:
                os.write(write, c.submit_text(text, base)["study"].encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        sid = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"submit as {user.name} failed"
    assert sid
    return sid


SH_SPEC = """
name = "{name}"
command = ["/bin/sh", "{script}"]
workdir = "{workdir}"
[objective]
metric = "loss"
mode = "min"
[space]
x = {{ param_type = "uniform", range = [0, 1] }}
[limits]
max_trials = 1
"""


def test_another_users_study_is_not_shown(users: list[tuple[str, int, int]], shots: Path) -> None:
    alice = users[0]
    root = Path(tempfile.mkdtemp(prefix="hpod"))
    root.chmod(0o755)  # alice reaches the socket and her workdir through it
    d = DaemonHandle(root, 2)
    config = root / "hpod.toml"
    config.write_text('socket_mode = 0o666\nread_access = "owner"\n')
    d.command = [*d.command, "--config", str(config)]
    d.start()
    try:
        mine = d.write_spec("roots", spec("roots", steps=2, limits="max_trials = 1",
                                          points="partial_grid = true"))  # fmt: skip
        with Client(d.socket) as c:
            root_sid = c.submit(mine)["study"]
            c.wait(root_sid, timeout=60)
        work = root / "alice"
        work.mkdir()
        work.chmod(0o777)
        (work / "t.sh").write_text("exit 0\n")
        text = SH_SPEC.format(name="alices", script=work / "t.sh", workdir=work)
        alice_sid = submit_as(alice, d.socket, text, work)
        warm_dashboard(d.socket, root_sid)
        with dashboard_as(alice, d.socket) as url, Browser() as b:
            base = url.split("/?")[0]
            b.goto(url)
            b.until(f"document.querySelector('tr[data-study=\"{alice_sid}\"]') !== null",
                    10, "alice's study")  # fmt: skip
            rows = b.eval("[...document.querySelectorAll('tr[data-study]')]"
                          ".map(r => r.dataset.study)")  # fmt: skip
            assert rows == [alice_sid]  # root's study is not listed
            b.screenshot(shots / "other-user-studies.png")
            b.goto(f"{base}/study/{root_sid}")
            error = b.until("document.getElementById('error')?.textContent", 10, "a refusal")
            assert "that you may read" in error
            assert root_sid in error
            assert b.eval("document.querySelector('#best')") is None
            b.screenshot(shots / "other-user-refused.png")
        # The same page on root's own dashboard shows it.
        with dashboard(d) as url, Browser() as b:
            b.goto(url.replace("/?", f"/study/{root_sid}?"))
            b.until("document.querySelector('#best .value') !== null", 10, "root's study page")
        for name in ("other-user-studies.png", "other-user-refused.png"):
            keep(shots, shots / name)
    finally:
        if d.proc is not None:
            assert d.stop() == 0, d.output()
        shutil.rmtree(root, ignore_errors=True)
