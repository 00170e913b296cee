#!/usr/bin/env python3
"""Conditional writes for `rclone serve s3`, which ignores them: a reverse proxy that answers 412
Precondition Failed to a PUT with `If-None-Match: *` when the object exists, or with `If-Match: ETAG`
when the object's ETag differs, and passes everything else through unchanged (SigV4 signatures stay
valid: method, path, query, headers and body are forwarded as received).

Why: Tansu keeps each partition's high watermark in S3 and, after a restart, writes it with a
create-if-absent PUT; S3 answers 412 for an existing object and Tansu then reads the stored
watermark. rclone instead overwrites it, Tansu restarts the partition at offset 0 and overwrites
acknowledged records (measured here: every restart, clean or not). Stdlib only.

    python infra/kafka/s3_guard.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --root DIR
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def make_handler(upstream: tuple[str, int], root: str) -> type[BaseHTTPRequestHandler]:
    """`root` is the folder rclone serves: the guard reads an object's current ETag from its file."""
    root = os.path.normpath(root)
    local = threading.local()
    # Conditional writes are checked and applied under one lock, so two of them cannot interleave.
    write_lock = threading.Lock()

    def connection() -> http.client.HTTPConnection:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(*upstream, timeout=60)
        return local.conn

    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, method: str, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
            for attempt in range(2):  # one retry on a stale keep-alive connection
                try:
                    conn = connection()
                    conn.request(method, self.path, body=body, headers=headers)
                    return conn.getresponse()
                except (ConnectionError, http.client.HTTPException):
                    local.conn = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _precondition_failed(self) -> None:
            body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code></Error>'
            self.send_response(412)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _relay(self, response: http.client.HTTPResponse) -> None:
            data = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            if self.command == "PUT" and ("If-None-Match" in self.headers or "If-Match" in self.headers):
                with write_lock:
                    current = self._current_etag()
                    none_match, match = self.headers.get("If-None-Match"), self.headers.get("If-Match")
                    if (none_match == "*" and current is not None) or (
                        match is not None and match.strip('"') != (current or "").strip('"')
                    ):
                        self._precondition_failed()
                        return
                    self._relay(self._forward(self.command, body, headers))
                return
            self._relay(self._forward(self.command, body or None, headers))

        def _current_etag(self) -> str | None:
            # The local file behind the object path (path-style: /bucket/key), never outside root.
            path = os.path.normpath(os.path.join(root, unquote(urlsplit(self.path).path).lstrip("/")))
            if not path.startswith(root + os.sep):
                return None
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            return hashlib.md5(data).hexdigest()  # rclone's ETag for a local file: its MD5

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="rclone's HOST:PORT")
    parser.add_argument("--root", required=True, help="the folder rclone serves (to read current ETags)")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    up_host, up_port = args.upstream.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), make_handler((up_host, int(up_port)), args.root))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
