"""Open an HTML file in the system's headless Chromium through the DevTools protocol, as the report tests do.

:func:`open_page` starts ``chromium --headless`` with a throwaway profile, loads the file, and returns what a
person would notice: JavaScript exceptions, console errors, requests that left the machine, what a DOM query
found, and a PNG screenshot. Chromium missing is an error naming the install command (the tests fail, they
do not skip: ``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get install -y chromium"


def chromium_path() -> str:
    """The Chromium executable; AssertionError naming the install command when there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(
        f"no Chromium on PATH (looked for {', '.join(BROWSERS)}): install it with `{INSTALL}`"
    )


@dataclass
class Page:
    """What loading a page showed."""

    errors: list[str] = field(default_factory=list)  # exceptions, console errors, failed loads
    outside_requests: list[str] = field(default_factory=list)  # anything but file: and data: URLs
    query: Any = None  # the value of the JavaScript expression passed to open_page
    screenshot: bytes = b""


class _Session:
    """One DevTools websocket: commands by id, events kept in order."""

    def __init__(self, url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e["method"] == event for e in self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not send {event} within {timeout:.0f} s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file():
            text = marker.read_text().split()
            if text:
                return int(text[0])
        if proc.poll() is not None:
            raise AssertionError(f"Chromium exited with code {proc.returncode} before it was ready")
        time.sleep(0.1)
    raise AssertionError(f"Chromium did not open its DevTools port within {timeout:.0f} s")


def open_page(
    path: Path, expression: str, *, width: int = 1280, height: int = 900, full_page: bool = False
) -> Page:
    """Load ``path`` in headless Chromium; evaluate ``expression`` (JavaScript returning JSON) once loaded.

    Args:
        path: the HTML file.
        expression: evaluated in the page after its load event; its value is :attr:`Page.query`.
        width: viewport width in CSS pixels.
        height: viewport height (the screenshot's height unless ``full_page``).
        full_page: screenshot the whole page, not the first screen.

    Returns:
        The errors, the outside requests, the query's value and the screenshot.
    """
    binary = chromium_path()
    profile = Path(tempfile.mkdtemp(prefix="ddetr_chromium_"))
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    page = Page()
    try:
        port = _devtools_port(profile, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.loads(response.read())
        target = next(t for t in targets if t.get("type") == "page")
        session = _Session(target["webSocketDebuggerUrl"])
        try:
            for domain in ("Runtime", "Log", "Page", "Network"):
                session.call(f"{domain}.enable")
            session.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            session.call("Page.navigate", url=path.resolve().as_uri())
            session.wait_for("Page.loadEventFired")
            result = session.call("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in result:
                raise AssertionError(f"the test's query failed: {result['exceptionDetails']}")
            page.query = result["result"].get("value")
            shot = session.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
            page.screenshot = base64.b64decode(shot["data"])
            session.call("Runtime.evaluate", expression="0")  # flush events sent meanwhile
        finally:
            session.close()
        for event in session.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                page.errors.append(f"exception: {details.get('exception', {}).get('description') or details}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                page.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                if not url.startswith(("file:", "data:", "about:")):
                    page.outside_requests.append(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return page


#: The DOM query of a ddetr report: section ids; per chart its data marks and size. A matplotlib chart's data
#: (lines, bars, cells, points) carry a clip path, its axes, ticks and labels do not: an empty chart has none.
REPORT_QUERY = """
(() => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {name: f.dataset.chart, marks: svg ? svg.querySelectorAll('[clip-path]').length : 0,
            width: box.width, height: box.height};
  });
  const images = [...document.querySelectorAll('img')].map(i => ({complete: i.complete, width: i.naturalWidth}));
  return {title: document.title, sections: [...document.querySelectorAll('section')].map(s => s.id),
          charts: charts, images: images, height: document.documentElement.scrollHeight};
})()
"""


def check_report(path: Path, sections: list[str], charts: list[str], **shot: object) -> Page:
    """Open ``path`` in Chromium and assert: no error, nothing fetched, these sections and charts, all drawn."""
    page = open_page(path, REPORT_QUERY, **shot)  # type: ignore[arg-type]
    assert page.errors == [], page.errors
    assert page.outside_requests == [], page.outside_requests
    found = page.query
    assert found["sections"] == sections
    assert [c["name"] for c in found["charts"]] == charts
    for chart in found["charts"]:
        assert chart["marks"] > 0, f"chart {chart['name']} of {path} is empty"
        assert chart["width"] > 100 and chart["height"] > 100, chart
    assert all(i["complete"] and i["width"] > 0 for i in found["images"]), found["images"]
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 10_000
    return page
