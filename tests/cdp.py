"""A headless Chromium driven over the Chrome DevTools Protocol (a WebSocket), for the page tests.

No browser-automation package is needed: Chromium is started with ``--remote-debugging-port=0``,
prints the browser's WebSocket address, and the few commands the tests use (navigate, evaluate,
screenshot) are sent over that WebSocket with aiohttp. Exceptions the page throws and console errors
are collected in :attr:`Browser.errors`.

:func:`find_chromium` names the executable (``DELTAFEED_CHROMIUM``, else ``chromium`` or
``chromium-browser`` on PATH), or None where there is none.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp


def find_chromium() -> str | None:
    """The Chromium executable to drive, or None when this machine has none."""
    named = os.environ.get("DELTAFEED_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page (tab). Use :meth:`start`, then :meth:`close`."""

    def __init__(
        self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession
    ) -> None:
        self._proc = proc
        self._ws = ws
        self._http = http
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._session: str | None = None
        self.errors: list[str] = []  # exceptions thrown and console errors, as text
        self._reader = asyncio.create_task(self._read())
        self._drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, executable: str, profile: Path, width: int = 1280, height: int = 720) -> Browser:
        """Start Chromium (its profile in ``profile``) and open a blank page."""
        proc = await asyncio.create_subprocess_exec(
            executable,
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        url = None
        try:
            async with asyncio.timeout(60):
                while url is None:
                    line = await proc.stderr.readline()
                    if not line:
                        raise RuntimeError(f"{executable} exited before it listened (code {await proc.wait()})")
                    text = line.decode(errors="replace").strip()
                    if text.startswith("DevTools listening on "):
                        url = text.removeprefix("DevTools listening on ")
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        # Keep reading its stderr, or a chatty Chromium blocks on a full pipe.
        drain = asyncio.create_task(_drain(proc.stderr))
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url, max_msg_size=64 * 1024 * 1024)
        browser = cls(proc, ws, http)
        browser._drain = drain
        target = await browser.send("Target.createTarget", url="about:blank", newWindow=False)
        attached = await browser.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        browser._session = attached["sessionId"]
        await browser.send("Page.enable")
        await browser.send("Runtime.enable")
        await browser.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        return browser

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            if "id" in doc:
                fut = self._waiting.pop(doc["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(doc)
            elif doc.get("method") == "Runtime.exceptionThrown":
                d = doc["params"]["exceptionDetails"]
                self.errors.append(str(d.get("exception", {}).get("description") or d.get("text")))
            elif doc.get("method") == "Runtime.consoleAPICalled" and doc["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in doc["params"]["args"]))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command; its result (RuntimeError with the protocol's message when it fails)."""
        i = next(self._ids)
        msg: dict[str, Any] = {"id": i, "method": method, "params": params}
        if self._session is not None:
            msg["sessionId"] = self._session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[i] = fut
        await self._ws.send_str(json.dumps(msg))
        async with asyncio.timeout(30):
            doc = await fut
        if "error" in doc:
            raise RuntimeError(f"{method}: {doc['error'].get('message')}")
        result: dict[str, Any] = doc.get("result", {})
        return result

    async def goto(self, url: str) -> None:
        """Open ``url`` and wait for its load event's document to be there."""
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", timeout=30)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        got = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"{expression}: {got['exceptionDetails'].get('text')}")
        return got["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value (AssertionError naming it at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {expression} (errors: {self.errors})")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the page as it is drawn now."""
        got = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(got["data"]))
        return path

    async def close(self) -> None:
        self._session = None  # a browser-level command
        try:
            await self.send("Browser.close")
        except Exception:
            self._proc.kill()
        try:
            async with asyncio.timeout(10):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        self._reader.cancel()
        if self._drain is not None:
            self._drain.cancel()
        await self._ws.close()
        await self._http.close()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
