"""A real HTTP server on loopback for the download tests and benchmark: generated images plus
every failure the web can throw at a crawler. It counts each request by path and by Host header.

    with ImageServer() as srv:
        srv.url("/img/3.jpg")      # http://127.0.0.1:PORT/img/3.jpg
        srv.hits["/img/3.jpg"]     # requests served for that path

Routes (``expected`` gives the reason clipcurate must report for each failure route):
/img/{i}.jpg  /img/{i}.png   ok images (clipcurate.core.synth, 64 px, seeded by i; ``image_delay`` s late)
/404 /500                    HTTP errors
/slow                        sleeps ``slow_seconds`` before answering (→ timeout)
/trickle                     headers, then one byte every 0.1 s forever (→ fetch deadline)
/bomb.png                    a 150-byte PNG that declares 100000 x 100000 pixels
/not-an-image                an HTML page served as image/jpeg
/truncated.jpg               the first half of a JPEG, with a matching Content-Length
/short-body                  Content-Length 5000, 100 bytes, then the connection closes
/trickle-headers             one header line every 0.1 s forever (→ fetch deadline)
/huge-length                 Content-Length: 10^12, then a slow trickle
/endless                     no Content-Length, 64 KiB chunks forever
/redirect-private            302 to http://127.0.0.1:PORT/redirect-target.jpg
/redirect-target.jpg         an ok image (must never be reached through the redirect)
/robots                      an ok image with X-Robots-Tag: noai

``image_delay`` (the benchmark's simulated latency) is a sleep in the request's own thread: the
server runs one thread per connection, so a delayed answer holds back no other request.
"""

from __future__ import annotations

import collections
import http.server
import socket
import struct
import threading
import time
import zlib

from clipcurate.core.synth import caption_for, jpeg_bytes, make_image, png_bytes

EXPECTED = {
    "/404": ("failed", "HTTP 404"),
    "/500": ("failed", "HTTP 500"),
    "/slow": ("failed", "timeout"),
    "/trickle": ("failed", "too slow (fetch deadline)"),
    "/trickle-headers": ("failed", "too slow (fetch deadline)"),
    "/bomb.png": ("failed", "image too large (pixels)"),
    "/not-an-image": ("failed", "not an image"),
    "/truncated.jpg": ("failed", "truncated image"),
    "/short-body": ("failed", "truncated body"),
    "/huge-length": ("failed", "body too large (Content-Length)"),
    "/endless": ("failed", "body too large (stream)"),
    "/redirect-private": ("refused", "refused: redirect to loopback address"),
    "/robots": ("failed", "disallowed by X-Robots-Tag"),
}


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/jpeg", headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: C901 - one branch per route
        srv: ImageServer = self.server.owner
        path = self.path.split("?", 1)[0]
        if path.startswith("http://"):  # absolute form
            path = "/" + path.split("/", 3)[-1]
        with srv.lock:
            srv.hits[path] += 1
            srv.hosts[self.headers.get("Host", "")] += 1
        try:
            if path.startswith("/img/"):
                name = path[5:]
                stem, _, ext = name.partition(".")
                if not stem.isdigit() or ext not in ("jpg", "png"):
                    return self._send(404, b"no", "text/plain")
                if srv.image_delay:
                    time.sleep(srv.image_delay)
                return self._send(200, srv.image(int(stem), ext), "image/" + ("jpeg" if ext == "jpg" else "png"))
            if path == "/404":
                return self._send(404, b"not found", "text/plain")
            if path == "/500":
                return self._send(500, b"oops", "text/plain")
            if path == "/slow":
                time.sleep(srv.slow_seconds)
                return self._send(200, srv.image(0, "jpg"))
            if path in ("/trickle", "/huge-length"):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "1000000" if path == "/trickle" else str(10 ** 12))
                self.end_headers()
                self.wfile.flush()
                for _ in range(int(srv.trickle_seconds / 0.1)):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            if path == "/trickle-headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                for i in range(int(srv.trickle_seconds / 0.1)):
                    self.wfile.write(b"X-Slow-%d: y\r\n" % i)
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            if path == "/endless":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                chunk = b"\0" * 65536
                for _ in range(100_000):
                    self.wfile.write(chunk)
                return
            if path == "/bomb.png":
                return self._send(200, bomb_png(), "image/png")
            if path == "/not-an-image":
                return self._send(200, b"<html><body>an ad, not an image</body></html>" * 20, "image/jpeg")
            if path == "/truncated.jpg":
                data = srv.image(1, "jpg")
                return self._send(200, data[: len(data) // 2])
            if path == "/short-body":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "5000")
                self.end_headers()
                self.wfile.write(srv.image(2, "jpg")[:100])
                return
            if path == "/redirect-private":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{srv.port}/redirect-target.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/redirect-target.jpg":
                return self._send(200, srv.image(3, "jpg"))
            if path == "/robots":
                return self._send(200, srv.image(4, "jpg"), headers={"X-Robots-Tag": "noai"})
            return self._send(404, b"no such route", "text/plain")
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            return


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class ImageServer:
    """Threaded loopback HTTP server; ``ipv6=True`` also listens on [::1] (same port when free)."""

    def __init__(self, slow_seconds: float = 6.0, trickle_seconds: float = 30.0, ipv6: bool = False,
                 image_size: int = 64, image_delay: float = 0.0):
        self.image_delay = image_delay
        self.slow_seconds = slow_seconds
        self.trickle_seconds = trickle_seconds
        self.image_size = image_size
        self.hits: collections.Counter = collections.Counter()
        self.hosts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self._cache: dict = {}
        self._servers = [_Server(("127.0.0.1", 0), _Handler)]
        self.port = self._servers[0].server_address[1]
        self.port6 = None
        if ipv6:
            try:
                s6 = _Server6(("::1", 0), _Handler)
                self._servers.append(s6)
                self.port6 = s6.server_address[1]
            except OSError:
                pass
        for s in self._servers:
            s.owner = self

    def image(self, i: int, ext: str = "jpg") -> bytes:
        k = (i, ext)
        if k not in self._cache:
            img = make_image(i % 10, i, "photo", size=self.image_size)
            self._cache[k] = jpeg_bytes(img) if ext == "jpg" else png_bytes(img)
        return self._cache[k]

    def caption(self, i: int) -> str:
        import numpy as np

        return caption_for(i % 10, np.random.default_rng(i)) + f" #{i}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def url6(self, path: str) -> str:
        return f"http://[::1]:{self.port6}{path}"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.hits.values())

    def start(self) -> "ImageServer":
        for s in self._servers:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def write_urls(path, rows: list[tuple[str, str]]) -> None:
    """A user-style input file (Parquet) of (url, caption)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), path)


if __name__ == "__main__":  # a server for manual runs: python -m tests._download_server
    with ImageServer() as srv:
        print(f"serving on {srv.url('/')}", flush=True)
        while True:
            time.sleep(3600)
