"""Headless Chromium for tests, driven over the Chrome DevTools Protocol with a plain websocket.

Debian's ``chromium`` package (``.ci/run`` installs it when missing), a fresh profile per
browser, no network-facing background services, nothing downloaded at run time. One page
is attached in flat mode, so commands and events for it carry its ``sessionId``.
Protocol reference: https://chromedevtools.github.io/devtools-protocol/
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

from websockets.sync.client import connect

CHROMIUM = "chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


class Page:
    """A Chromium process with one page; ``events`` holds every event the page sent, in order."""

    def __init__(self, workdir: Path, width: int = 1280, height: int = 900, timeout: float = 60):
        self.timeout = timeout
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True)
        self._log = (workdir / "chromium.log").open("w")
        self._proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                       f"--window-size={width},{height}", "about:blank"],
                                      stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            port, path = self._endpoint(profile / "DevToolsActivePort")
            self._ws = connect(f"ws://127.0.0.1:{port}{path}", proxy=None, max_size=None, open_timeout=timeout)
            self._ids = itertools.count(1)
            self.events: list[dict] = []
            self.session = None
            target = self.send("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _endpoint(self, file: Path) -> tuple[str, str]:
        """Chromium writes its port and browser websocket path here once it listens (port 0: any free one)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}; see {self._log.name}")
            lines = file.read_text().split() if file.exists() else []
            if len(lines) == 2:
                return lines[0], lines[1]
            time.sleep(0.1)
        raise TimeoutError(f"chromium did not open its debugging port within {self.timeout} s")

    def _receive(self) -> dict:
        message = json.loads(self._ws.recv(timeout=self.timeout))
        if "method" in message and message.get("sessionId") == self.session:
            self.events.append(message)
        return message

    def send(self, method: str, **params) -> dict:
        """Run one protocol command on the page (on the browser before attaching); raises on a protocol error."""
        call = {"id": next(self._ids), "method": method, "params": params}
        if self.session:
            call["sessionId"] = self.session
        self._ws.send(json.dumps(call))
        while True:
            message = self._receive()
            if message.get("id") == call["id"]:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, event: str, since: int) -> dict:
        """The first ``event`` of the page at or after ``events[since]``, waiting for it if need be."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for message in self.events[since:]:
                if message["method"] == event:
                    return message["params"]
            since = len(self.events)
            self._receive()
        raise TimeoutError(f"no {event} within {self.timeout} s")

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image of the page decoded or failed)."""
        since = len(self.events)
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", since)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page; raises on an exception."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element, scrolled into view first."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (e.g. a resource that failed to load)."""
        found = []
        for message in self.events:
            method, params = message["method"], message["params"]
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
        return found

    def screenshot(self, path: Path) -> Path:
        """The whole page, not just the viewport, as PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        png = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(png["data"]))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "_ws", None) is not None:
                self._ws.close()
        finally:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._log.close()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
