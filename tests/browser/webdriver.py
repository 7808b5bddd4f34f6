"""A minimal W3C WebDriver client for headless Chromium, standard library only.

Drives Debian's ``chromium`` through ``chromedriver`` over HTTP (no selenium): open a
page, run JavaScript, click, read the console log, take a screenshot. Used by the
browser tests of the HTML pages rlvr writes. ``tests/browser/install.sh`` installs both.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars"]


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One chromedriver process and one headless Chromium session; use as a context manager."""

    def __init__(self, chrome: str, driver: str, width: int = 1280, height: int = 900, timeout_s: float = 120):
        self.timeout_s = timeout_s
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="rlvr-chromium-")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([driver, f"--port={self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._call("GET", "/status").get("ready"):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromedriver did not start on port {self.port}")
            time.sleep(0.2)
        caps = {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": chrome,
                                       "args": CHROME_ARGS + [f"--user-data-dir={self.profile}",
                                                              f"--window-size={width},{height}"]}}
        try:
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        except Exception:
            self.close()
            raise

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}") from None
        value = payload.get("value", payload)
        return value if value is not None else {}

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, path_or_url: str) -> None:
        url = path_or_url if "://" in path_or_url else "file://" + os.path.abspath(path_or_url)
        self._call("POST", self._s("/url"), {"url": url})

    def js(self, script: str, *args):
        """Run ``script`` (a function body; use ``return``) in the page and return its value."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def click(self, css: str) -> None:
        element = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        element_id = next(iter(element.values()))
        self._call("POST", self._s(f"/element/{element_id}/click"), {})

    def console(self) -> list[dict]:
        """Browser console entries since the last call: dicts with ``level`` and ``message``."""
        return self._call("POST", self._s("/se/log"), {"type": "browser"}) or []

    def screenshot(self, path: str, full_page: bool = True) -> str:
        """Save a PNG of the page (the whole page height when ``full_page``)."""
        if full_page:
            shot = self._call("POST", self._s("/goog/cdp/execute"),
                              {"cmd": "Page.captureScreenshot", "params": {"format": "png", "captureBeyondViewport": True}})
            data = shot["data"]
        else:
            data = self._call("GET", self._s("/screenshot"))
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self._call("DELETE", self._s(""))
        except Exception:  # noqa: BLE001 - closing best effort; the process is killed below
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
        self.log.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
