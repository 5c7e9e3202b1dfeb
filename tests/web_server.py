"""Local web servers for tests of restore_cli.urls: a file host, a GitHub look-alike and a Google Drive look-alike.

Each `WebServer` runs on 127.0.0.1 at a free port in a daemon thread; use it as a context manager. Routes are
keyed by path (the query string goes to the route). Every request is recorded.

* `github_asset` makes a GitHub-style release URL: the "github" server answers 302 to a signed URL on another
  server (the object store), which serves the bytes with ETag, Accept-Ranges and Content-Disposition.
* `FakeDrive` answers as Google Drive does today: `drive.google.com/uc?export=download&id=ID` redirects (303) to
  `drive.usercontent.google.com/download?id=ID&export=download`, which serves a small file at once and puts the
  "can't scan this file for viruses" page (a GET form with id, export, confirm and uuid) in front of a large one;
  `embeddedfolderview?id=ID` lists a folder as links to `/file/d/ID/view` and `/drive/folders/ID`.

File replies honour `Range: bytes=N-` with 206 (unless `honour_range` is off), `If-Range` against the ETag, and
`cut_plan`: each entry is the number of body bytes sent, after a Content-Length announcing all of them, before the
connection is dropped.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.local_server import LocalServer, closed_port, send_cut, sha256


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content: bool = False  # a file: Range, If-Range and cut_plan apply


Route = Callable[[Request], Reply]


class WebServer(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Route] = {}
        self.honour_range = True

    # -- content ------------------------------------------------------------------------------------------------

    def file(self, path: str, data: bytes, headers: dict[str, str] | None = None) -> str:
        """Serve `data` at `path` (replacing what was there); its URL."""
        base = {"Content-Type": "application/octet-stream", "ETag": f'"{sha256(data)[:20]}"'}
        fixed = base | (headers or {})
        self.routes[path] = lambda _req: Reply(200, dict(fixed), data, content=True)
        return self.url + path

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        self.routes[path] = lambda _req: Reply(status, {"Location": location})
        return self.url + path

    def page(self, path: str, text: str, status: int = 200) -> str:
        self.routes[path] = lambda _req: Reply(status, {"Content-Type": "text/html; charset=utf-8"}, text.encode())
        return self.url + path

    # -- request log --------------------------------------------------------------------------------------------

    def count(self, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if contains in r.path)

    def last(self, contains: str = "") -> Request:
        with self._lock:
            return [r for r in self.requests if contains in r.path][-1]


    # -- called from handler threads ----------------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        web: WebServer = self.server.owner  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        request = Request("GET", split.path, dict(parse_qsl(split.query)),
                          {k.lower(): v for k, v in self.headers.items()})
        web._record(request)
        route = web.routes.get(split.path)
        reply = route(request) if route else Reply(404, {"Content-Type": "text/plain"}, b"Not Found")
        if reply.content:
            self._content(web, request, reply)
        else:
            self._send(reply.status, reply.headers, reply.body)

    def _content(self, web: WebServer, request: Request, reply: Reply) -> None:
        data, headers, status = reply.body, dict(reply.headers), 200
        headers["Accept-Ranges"] = "bytes" if web.honour_range else "none"
        rng = request.headers.get("range", "")
        if_range = request.headers.get("if-range")
        same = if_range is None or if_range in (headers.get("ETag"), headers.get("Last-Modified"))
        if web.honour_range and same and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start = int(m[1])
            if start >= len(data):
                self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
                return
            status, data = 206, data[start:]
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{len(reply.body)}"
        cut = web._next_cut()
        if cut is None:
            self._send(status, headers, data)
            return
        send_cut(self, status, headers, data, cut)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def github_asset(github: WebServer, objects: WebServer, path: str, data: bytes) -> str:
    """A release asset at github `path` that answers 302 to a signed object-store URL; the github URL."""
    key = f"/release-assets/{sha256(path.encode())[:12]}"
    name = path.rsplit("/", 1)[-1]
    objects.file(key, data, {"Content-Disposition": f"attachment; filename={name}",
                             "Last-Modified": "Tue, 01 Oct 2024 10:00:00 GMT"})
    return github.redirect(path, f"{objects.url}{key}?X-Amz-Signature=0ff1ce&X-Amz-Expires=300")


# ----------------------------------------------------------------------------------------------------------------
# Google Drive

_ids = itertools.count(1)


def _drive_id() -> str:
    # Drive ids are 33 characters of [-\w]; these are unique per test run.
    return "1" + hashlib.sha1(str(next(_ids)).encode()).hexdigest()[:24] + "-_abcdefg"


class FakeDrive:
    """drive.google.com (`site`) and drive.usercontent.google.com (`content`) on two local ports."""

    def __init__(self) -> None:
        self.site = WebServer()
        self.content = WebServer()
        self.files: dict[str, tuple[str, bytes, bool]] = {}  # id -> (name, data, large)
        self.folders: dict[str, tuple[str, list[tuple[str, str]]]] = {}  # id -> (title, [(name, child id)])
        self.quota_exceeded = False
        self._uuids: set[str] = set()
        self.site.routes["/uc"] = self._uc
        self.site.routes["/embeddedfolderview"] = self._folder_view
        self.content.routes["/download"] = self._download

    def add_file(self, name: str, data: bytes, *, large: bool = False) -> str:
        file_id = _drive_id()
        self.files[file_id] = (name, data, large)
        return file_id

    def add_folder(self, title: str, children: dict[str, str]) -> str:
        """A folder holding `children` (name -> file or folder id)."""
        folder_id = _drive_id()
        self.folders[folder_id] = (title, list(children.items()))
        return folder_id

    def file_url(self, file_id: str) -> str:
        return f"https://drive.google.com/file/d/{file_id}/view?usp=sharing"

    def folder_url(self, folder_id: str) -> str:
        return f"https://drive.google.com/drive/folders/{folder_id}?usp=sharing"

    def __enter__(self) -> FakeDrive:
        self.site.__enter__()
        self.content.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.content.__exit__(*exc)
        self.site.__exit__(*exc)

    # -- routes -------------------------------------------------------------------------------------------------

    def _uc(self, req: Request) -> Reply:
        query = urlencode({"id": req.query.get("id", ""), "export": req.query.get("export", "download")})
        return Reply(303, {"Location": f"{self.content.url}/download?{query}"})

    def _folder_view(self, req: Request) -> Reply:
        folder = self.folders.get(req.query.get("id", ""))
        if folder is None:
            return Reply(404, {"Content-Type": "text/html"}, b"<html><title>Error 404 (Not Found)</title></html>")
        title, children = folder
        entries = []
        for name, child in children:
            href = (f"https://drive.google.com/drive/folders/{child}" if child in self.folders
                    else f"https://drive.google.com/file/d/{child}/view?usp=drive_web")
            entries.append(
                f'<div class="flip-entry" id="entry-{child}" tabindex="0" role="link"><div class="flip-entry-info">'
                f'<a href="{href}" target="_blank"><div class="flip-entry-visual"><div class="flip-entry-thumb">'
                '<img src="https://drive-thirdparty.googleusercontent.com/16/type/application/octet-stream" alt="">'
                f'</div></div><div class="flip-entry-title">{html.escape(name)}</div></a></div>'
                '<div class="flip-entry-last-modified"><div>Aug 3, 2022</div></div></div>'
            )
        page = (f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
                f'<div class="flip-entries">{"".join(entries)}</div></body></html>')
        return Reply(200, {"Content-Type": "text/html; charset=utf-8"}, page.encode())

    def _download(self, req: Request) -> Reply:
        file_id = req.query.get("id", "")
        if file_id not in self.files:
            return Reply(404, {"Content-Type": "text/html"}, b"<html><title>Not Found</title></html>")
        if self.quota_exceeded:
            page = ('<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>'
                    '<div class="uc-main"><p class="uc-error-caption">Sorry, you can&#39;t view or download this '
                    'file at this time.</p><p class="uc-error-subcaption">Too many users have viewed or downloaded '
                    'this file recently. Please try accessing the file again later.</p></div></body></html>')
            return Reply(200, {"Content-Type": "text/html; charset=utf-8"}, page.encode())
        name, data, large = self.files[file_id]
        if large and not (req.query.get("confirm") == "t" and req.query.get("uuid") in self._uuids):
            uuid = f"{len(self._uuids):08d}-0000-4000-8000-{file_id[:12]}"
            self._uuids.add(uuid)
            page = (
                '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
                '<div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can&#39;t scan '
                'this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size">'
                f'<a href="/open?id={file_id}">{html.escape(name)}</a> ({len(data) // 1000}K)</span> is too large '
                'for Google to scan for viruses. Would you still like to download this file?</p>'
                f'<form id="download-form" action="{self.content.url}/download" method="get">'
                '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button" '
                'value="Download anyway"/>'
                f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" '
                'value="download"><input type="hidden" name="confirm" value="t">'
                f'<input type="hidden" name="uuid" value="{uuid}"></form></div></div></body></html>'
            )
            return Reply(200, {"Content-Type": "text/html; charset=utf-8"}, page.encode())
        disposition = f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
        return Reply(200, {"Content-Type": "application/octet-stream", "Content-Disposition": disposition},
                     data, content=True)


WebServer.handler = _Handler
__all__ = ["FakeDrive", "WebServer", "closed_port", "github_asset", "sha256"]
