"""A real HTTP server for download tests: serves a folder on 127.0.0.1, honours Range, misbehaves on cue.

Use it as the `http_server` fixture by importing it into a test module
(`from http_server import http_server_fixture`), or directly: `with LocalServer(folder) as server: ...`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_CHUNK = 64 * 1024


@dataclass
class Faults:
    """Ways to misbehave. `drop_after` bytes then close, for the first `drop_times` requests."""

    drop_after: int | None = None
    drop_times: int = 0
    ignore_range: bool = False  # answer 200 with the whole file, as servers without Range support do
    throttle_s: float = 0.0  # pause before each 64 KiB chunk, to make a download take a while


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    sent: int = 0  # body bytes actually written


@dataclass
class _State:
    directory: Path
    faults: Faults = field(default_factory=Faults)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        state = self.server.state
        path = (state.directory / self.path.lstrip("/").split("?")[0]).resolve()
        header = self.headers.get("Range")
        if not path.is_file() or state.directory.resolve() not in path.parents:
            self._record(header, 404)
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if header and not state.faults.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self._record(header, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        request = self._record(header, 206 if start else 200)
        self.send_response(request.status)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        with state.lock:
            drop = state.faults.drop_after if state.faults.drop_times > 0 else None
            if drop is not None:
                state.faults.drop_times -= 1
                body = body[:drop]
        for i in range(0, len(body), _CHUNK):
            time.sleep(state.faults.throttle_s)
            self.wfile.write(body[i : i + _CHUNK])
            request.sent += len(body[i : i + _CHUNK])
        self.close_connection = True

    def _record(self, header: str | None, status: int) -> Request:
        request = Request(self.path, header, status)
        with self.server.state.lock:
            self.server.state.requests.append(request)
        return request


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class LocalServer:
    """Serve `directory` over HTTP on a free local port until closed."""

    def __init__(self, directory: Path) -> None:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = _State(Path(directory))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def directory(self) -> Path:
        return self._httpd.state.directory

    @property
    def faults(self) -> Faults:
        return self._httpd.state.faults

    @property
    def requests(self) -> list[Request]:
        return self._httpd.state.requests

    def requests_for(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.path.lstrip("/") == name]

    def url(self, name: str = "") -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{name}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(name="http_server")
def http_server_fixture(tmp_path: Path) -> Iterator[LocalServer]:
    """A LocalServer over an empty `tmp_path/www`; tests write the files to serve into `server.directory`."""
    www = tmp_path / "www"
    www.mkdir()
    with LocalServer(www) as server:
        yield server
