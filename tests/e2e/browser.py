"""A headless Chromium driven over the Chrome DevTools Protocol (a websocket, `websockets`' sync
client): navigate, evaluate JavaScript, take screenshots. Enough for the dashboard's tests, with
nothing to download (Debian's `chromium`, which scripts/system-packages.sh installs)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.test_set_and_reads import until as poll

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
START_TIMEOUT = 30.0


class Browser:
    """One headless Chromium and its first page, over CDP."""

    def __init__(self, *, width: int = 1280, height: int = 1400) -> None:
        from websockets.sync.client import connect

        assert CHROMIUM is not None
        self.profile = Path(tempfile.mkdtemp(prefix="hpodcr"))
        self.log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115
        args = [
            CHROMIUM,
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"chromium did not start: {self.output()}")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._stack = contextlib.ExitStack()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            url = pages[0]["webSocketDebuggerUrl"]
            self.ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=10))
            self._ids = itertools.count(1)
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def output(self) -> str:
        self.log.flush()
        return (self.profile / "chromium.log").read_text(errors="replace")[-3000:]

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command and its result (the events meanwhile are dropped)."""
        rid = next(self._ids)
        self.ws.send(json.dumps({"id": rid, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == rid:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def eval(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def until(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        return poll(lambda: self.eval(expression), timeout, what)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.until("document.readyState === 'complete' && location.href !== 'about:blank'",
                   20, f"{url} loaded")  # fmt: skip

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
