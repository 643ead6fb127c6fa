"""A headless Chromium driven over the Chrome DevTools Protocol, for browser tests.

It uses the system's Chromium (Debian's ``chromium`` package) and aiohttp's websocket
client, so the tests need no browser download and no driver package. Only what the
dashboard tests use is here: open a page, evaluate JavaScript, wait for a condition in the
page, click like a user, take a screenshot, and collect the page's errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = Path("/usr/bin/chromium")

# The flags that let Chromium run headless as root in a container, with nothing phoning home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)

STARTUP_DEADLINE_S = 30.0
SHUTDOWN_DEADLINE_S = 10.0

Json = dict[str, Any]


class CdpError(RuntimeError):
    """Chromium answered a command with an error, or could not be started."""


class CdpConnection:
    """One websocket to the browser; commands for a page carry that page's session id
    (flat sessions), so one connection serves every page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Json]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    async def send(
        self, method: str, params: Json | None = None, session: str | None = None
    ) -> Json:
        command_id = next(self._ids)
        message: Json = {"id": command_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        answer: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = answer
        try:
            await self._ws.send_str(json.dumps(message))
            return await answer
        finally:
            self._pending.pop(command_id, None)

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                answer = self._pending.get(message["id"])
                if answer is None or answer.done():
                    continue  # a command whose caller gave up waiting
                if "error" in message:
                    answer.set_exception(CdpError(f"{message['error']}"))
                else:
                    answer.set_result(message.get("result", {}))
            else:
                page = self._pages.get(message.get("sessionId", ""))
                if page is not None:
                    page.on_event(message["method"], message.get("params", {}))
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(CdpError("Chromium closed the DevTools connection"))

    async def new_page(self, width: int = 1400, height: int = 1000) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session] = page
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        # times on the page must not depend on the machine's zone
        await page.send("Emulation.setTimezoneOverride", {"timezoneId": "UTC"})
        return page

    async def close_page(self, page: Page) -> None:
        await self.send("Target.closeTarget", {"targetId": page.target})
        self._pages.pop(page.session, None)

    async def close(self) -> None:
        with contextlib.suppress(CdpError, aiohttp.ClientError, ConnectionError):
            async with asyncio.timeout(SHUTDOWN_DEADLINE_S):
                await self.send("Browser.close")
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@dataclass
class Page:
    connection: CdpConnection
    target: str
    session: str
    errors: list[str] = field(default_factory=list)
    """Uncaught exceptions and console errors: a page that works has none."""
    failed_loads: list[str] = field(default_factory=list)
    """Requests answered with an error status or not at all, which a page may expect."""

    async def send(self, method: str, params: Json | None = None) -> Json:
        return await self.connection.send(method, params, self.session)

    def on_event(self, method: str, params: Json) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(
                str(details.get("exception", {}).get("description") or details.get("text"))
            )
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            report = f"{entry.get('text')} ({entry.get('url')})"
            (self.failed_loads if entry.get("source") == "network" else self.errors).append(report)

    async def navigate(self, url: str) -> None:
        answer = await self.send("Page.navigate", {"url": url})
        if "errorText" in answer:
            raise CdpError(f"cannot open {url}: {answer['errorText']}")
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details["text"]
            raise CdpError(f"{expression!r} threw: {description}")
        return answer["result"].get("value")

    async def wait_for(self, predicate: str, *, timeout_s: float = 15.0) -> Any:
        """The first truthy value of the JavaScript expression ``predicate``, polled in the
        page (an exception counts as not yet); AssertionError when it never comes."""
        expression = (
            "new Promise((resolve) => { const probe = () => { let value; "
            f"try {{ value = ({predicate}); }} catch (e) {{ value = undefined; }} "
            "if (value) resolve(value); else setTimeout(probe, 25); }; probe(); })"
        )
        try:
            async with asyncio.timeout(timeout_s):
                return await self.evaluate(expression)
        except TimeoutError:
            raise AssertionError(
                f"the page never satisfied {predicate} (page errors: {self.errors})"
            ) from None

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the first element ``selector`` matches."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "if (!e) return null; e.scrollIntoView({block: 'center'}); "
            "const r = e.getBoundingClientRect(); "
            "return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()"
        )
        if box is None:
            raise AssertionError(f"nothing on the page matches {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def screenshot(self, path: Path) -> None:
        """The whole page, not only the viewport, as PNG."""
        shot = await self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _devtools_port_file(marker: Path) -> list[str]:
    """Its two lines, port and browser path; fewer while Chromium is still writing it."""
    return marker.read_text().split() if marker.exists() else []


async def _devtools_address(process: asyncio.subprocess.Process, profile: Path, log: Path) -> str:
    """Chromium writes its chosen port and browser path to DevToolsActivePort once ready."""
    marker = profile / "DevToolsActivePort"
    try:
        async with asyncio.timeout(STARTUP_DEADLINE_S):
            while True:
                if process.returncode is not None:
                    tail = await asyncio.to_thread(_tail, log)
                    raise CdpError(f"chromium exited with {process.returncode}: {tail}")
                lines = await asyncio.to_thread(_devtools_port_file, marker)
                if len(lines) == 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
                await asyncio.sleep(0.05)
    except TimeoutError:
        tail = await asyncio.to_thread(_tail, log)
        raise CdpError(
            f"chromium did not open DevTools in {STARTUP_DEADLINE_S:.0f} s: {tail}"
        ) from None


@contextlib.asynccontextmanager
async def chromium(workdir: Path, executable: Path = CHROMIUM) -> AsyncIterator[CdpConnection]:
    """A fresh headless Chromium with its own profile under ``workdir``; closed on exit."""
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    log = workdir / "chromium.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        address = await _devtools_address(process, profile, log)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(address, max_msg_size=0)
            connection = CdpConnection(ws)
            try:
                yield connection
            finally:
                # asks the browser to quit: the wait below is then short
                await connection.close()
    finally:
        await _reap(process)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for the browser to quit; past the deadline, SIGTERM, then SIGKILL."""
    for stop in (None, process.terminate, process.kill):
        if process.returncode is not None:
            return
        if stop is not None:
            with contextlib.suppress(ProcessLookupError):
                stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DEADLINE_S / 2):
                await process.wait()
    await process.wait()
