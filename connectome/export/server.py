"""The output files, served on the port of Neuroglancer's own server (the neuroglancer package's,
which serves the client and the viewer state, see `export.viewer`), so one port carries everything.

- A key stored gzip-compressed (`<key>.gz`, as cloud-volume writes precomputed chunks) is served for
  `<key>` with `Content-Encoding: gzip`, as a bucket that stores it with that encoding would.
- Byte ranges (sharded precomputed), CORS (a Neuroglancer served elsewhere may read from it).
- A zarr v3 chunk that is not stored (all fill value) answers 404, which Neuroglancer reads as empty;
  every other answer of 400 or more is a failed request: logged on stderr and kept in `failures`.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
import threading
import urllib.parse
from typing import TextIO

import tornado.web

FILES_PREFIX = "/files/"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_ZARR_CHUNK = re.compile(r"/c(/\d+)+$")  # zarr v3 default chunk key encoding


class FileTree:
    """Directories served under `/files/<name>/`, and the log of what was asked for."""

    def __init__(self, mounts: dict[str, str], log: TextIO | None = None, log_all: bool = False):
        self.mounts = {name: os.path.abspath(d) for name, d in mounts.items()}
        self.log = log if log is not None else sys.stderr
        self.log_all = log_all  # also log every request answered
        self.failures: list[tuple[int, str, str]] = []
        self.requests = 0
        self._lock = threading.Lock()

    def locate(self, path: str) -> tuple[str, str | None] | None:
        """(file, content encoding) that answers the URL path `path`, or None."""
        if not path.startswith(FILES_PREFIX):
            return None
        name, _, rest = path[len(FILES_PREFIX):].partition("/")
        root = self.mounts.get(name)
        if root is None:
            return None
        rest = posixpath.normpath("/" + rest).lstrip("/")  # no way out of the root
        file = os.path.join(root, *rest.split("/")) if rest else root
        if os.path.isfile(file):
            return file, None
        if os.path.isfile(file + ".gz"):
            return file + ".gz", "gzip"
        return None

    def is_missing_chunk(self, path: str) -> bool:
        """Whether `path` names a chunk of a zarr v3 array (an unstored chunk is all fill value)."""
        m = _ZARR_CHUNK.search(path)
        return m is not None and self.locate(path[: m.start()] + "/zarr.json") is not None

    def record(self, status: int, method: str, path: str) -> None:
        with self._lock:
            self.requests += 1
            if status >= 400 and not (status == 404 and self.is_missing_chunk(path)):
                self.failures.append((status, method, path))
                print(f"connectome view: request failed: {status} {method} {path}", file=self.log, flush=True)
            elif self.log_all:
                print(f"connectome view: served: {status} {method} {path}", file=self.log, flush=True)


class FilesHandler(tornado.web.RequestHandler):
    """GET/HEAD/OPTIONS of one file of a `FileTree`."""

    def initialize(self, tree: FileTree) -> None:
        self.tree = tree

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Expose-Headers", "Content-Length, Content-Range, Content-Encoding")
        self.set_header("Cache-Control", "no-store")

    def options(self, *args) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Range, Content-Type")
        self.set_status(204)

    def get(self, *args) -> None:
        self._serve(body=True)

    def head(self, *args) -> None:
        self._serve(body=False)

    def on_finish(self) -> None:
        self.tree.record(self.get_status(), self.request.method or "GET", urllib.parse.unquote(self.request.path))

    def _serve(self, body: bool) -> None:
        found = self.tree.locate(urllib.parse.unquote(self.request.path))
        if found is None:
            self.set_status(404)
            return
        file, encoding = found
        size = os.path.getsize(file)
        start, end = 0, size
        ranged = self.request.headers.get("Range")
        if ranged and encoding is None:
            m = _RANGE.match(ranged.strip())
            if m is None or not (m.group(1) or m.group(2)):
                self.set_status(416)
                return
            if m.group(1):
                start, end = int(m.group(1)), min(size, int(m.group(2)) + 1 if m.group(2) else size)
            else:
                start = max(0, size - int(m.group(2)))
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.set_header("Content-Type", "application/json" if file.endswith(".json") else "application/octet-stream")
        if encoding:
            self.set_header("Content-Encoding", encoding)
        self.set_header("Content-Length", str(end - start))
        if body:
            with open(file, "rb") as f:
                f.seek(start)
                self.write(f.read(end - start))


def serve_files(tree: FileTree) -> str:
    """Add `tree` to the running Neuroglancer server; returns its base URL (`http://host:port`)."""
    import neuroglancer.server

    server = neuroglancer.server.global_server
    if server is None:
        raise RuntimeError("start a neuroglancer viewer first (export.viewer.start_viewer)")
    server.app.add_handlers(r".*", [(f"{FILES_PREFIX}.*", FilesHandler, {"tree": tree})])
    return server.server_url


def mount_url(base_url: str, name: str) -> str:
    return f"{base_url}{FILES_PREFIX}{name}"
