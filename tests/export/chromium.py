"""Headless Chromium driven through the DevTools protocol (tornado's websocket client): load a page,
record failed requests and console errors, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, binary: str, profile_dir: str, size=(1200, 900)):
        self.binary, self.profile_dir, self.size = binary, profile_dir, size
        self.failed_requests: list[tuple[int, str]] = []
        self.console_errors: list[str] = []
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}

    def __enter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
             "--ignore-gpu-blocklist", f"--window-size={self.size[0]},{self.size[1]}", "--hide-scrollbars",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile_dir}", "--no-first-run",
             "--disable-background-timer-throttling", "--disable-renderer-backgrounding", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(self.profile_dir, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} did not start (exit code {self.proc.poll()})")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._connect())
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.loop.run_until_complete(self._close())
        finally:
            self.loop.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    async def _connect(self) -> None:
        from tornado.websocket import websocket_connect

        self.ws = await websocket_connect(self.ws_url, max_message_size=512 * 1024 * 1024)
        self.reader = asyncio.ensure_future(self._read())

    async def _close(self) -> None:
        self.ws.close()
        self.reader.cancel()

    async def _read(self) -> None:
        while True:
            text = await self.ws.read_message()
            if text is None:
                return
            message = json.loads(text)
            if "id" in message and message["id"] in self._pending:
                self._pending.pop(message["id"]).set_result(message)
            else:
                self._event(message.get("method", ""), message.get("params", {}))

    def _event(self, method: str, params: dict) -> None:
        if method == "Network.responseReceived":
            status = int(params["response"]["status"])
            if status >= 400:
                self.failed_requests.append((status, params["response"]["url"]))
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.failed_requests.append((0, f"{params.get('errorText')} ({params.get('requestId')})"))
        elif method == "Runtime.exceptionThrown":
            self.console_errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))

    async def _call(self, method: str, params: dict | None, timeout: float) -> dict:
        self._id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._id] = future
        await self.ws.write_message(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        message = await asyncio.wait_for(future, timeout)
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error']}")
        return message.get("result", {})

    def call(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        return self.loop.run_until_complete(self._call(method, params, timeout))

    def wait(self, seconds: float) -> None:
        """Let the page run (and events arrive) for `seconds`."""
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
