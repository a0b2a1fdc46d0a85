"""A real HTTP/1.1 server on 127.0.0.1 for the image tests (stdlib http.server in a thread).

It serves in-memory files with byte-range support written here (single ranges, 206 +
Content-Range, 416 past the end, a strong ETag and If-Range), logs every request, and can
misbehave on purpose: drop the connection after N bytes of a response (once), or ignore Range.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class RequestRecord:
    path: str
    range: str | None
    status: int
    if_range: str | None = None


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the drop (once)
    ignore_range: bool = False
    log: list[RequestRecord] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server naming
        state = self.state
        path = self.path.split("?", 1)[0]
        body = state.files.get(path)
        range_header = self.headers.get("Range")
        if body is None:
            return self._reply(404, b"not found\n", range_header)
        start, end, status = 0, len(body) - 1, 200
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if_range = self.headers.get("If-Range")
        if range_header and if_range is not None and if_range != etag:
            range_header_used = None  # RFC 9110 13.1.5: validator differs -> whole current file
        else:
            range_header_used = range_header
        if range_header_used and not state.ignore_range:
            match = _RANGE.match(range_header)
            if not match:
                return self._reply(400, b"bad range\n", range_header)
            start = int(match[1])
            end = int(match[2]) if match[2] else len(body) - 1
            if start >= len(body):
                state.log.append(RequestRecord(path, range_header, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            end = min(end, len(body) - 1)
            status = 206
        payload = body[start : end + 1]
        state.log.append(RequestRecord(path, range_header, status, if_range))
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        self.end_headers()
        drop = state.drop_after.pop(path, None)
        if drop is not None:
            self.wfile.write(payload[:drop])
            self.wfile.flush()
            self.close_connection = True
            return None
        self.wfile.write(payload)
        return None

    def _reply(self, status: int, body: bytes, range_header: str | None):
        self.state.log.append(RequestRecord(self.path, range_header, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ImageHTTPServer:
    """Context manager: ``with ImageHTTPServer() as srv: srv.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.state = ServerState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ImageHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def requests_for(self, path: str) -> list[RequestRecord]:
        return [r for r in self.state.log if r.path == path]
