"""A small Hugging Face Hub look-alike for tests: only the routes huggingface_hub 2.4 uses to download files.

Runs on 127.0.0.1 at a free port, in a daemon thread; use it as a context manager (it stops on exit).

Routes, as the real Hub answers them:

* ``HEAD|GET /{owner}/{repo}/resolve/{revision}/{path}``
  - branch or tag: 307 with a *relative* Location to the same file at the commit sha, plus ``X-Repo-Commit``;
  - commit, plain (non-LFS) file: 200, ``ETag`` = git blob sha1, ``X-Repo-Commit``, ``Content-Length``, body;
  - commit, LFS file: 302 to ``/cdn/{sha256}`` (same origin, so the library follows it on HEAD), with
    ``X-Linked-Etag`` = sha256 and ``X-Linked-Size``;
  - 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound, which the library maps to its
    exception types.
* ``HEAD|GET /cdn/{sha256}?commit=...``: the LFS content; ``Range: bytes=N-`` answered with 206.
* ``GET /api/models/{owner}/{repo}/tree/{revision}``: the file list used by ``list_repo_files``.

``cut_plan`` makes the next content responses stop early: each entry is the number of body bytes sent (after a
``Content-Length`` announcing the whole file) before the connection is closed. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.local_server import LocalServer, closed_port, send_cut, sha256


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Repo:
    commits: dict[str, dict[str, tuple[bytes, bool]]] = field(default_factory=dict)  # sha -> path -> (data, lfs)
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.repos: dict[str, _Repo] = {}

    # -- content ------------------------------------------------------------------------------------------------

    def add_commit(
        self,
        repo: str,
        files: Mapping[str, bytes],
        *,
        refs: Iterable[str] = ("main",),
        lfs: Iterable[str] | None = None,
    ) -> str:
        """Add a commit holding exactly `files`; `lfs` names the LFS files (default: all but *.json / *.md)."""
        lfs_set = set(lfs) if lfs is not None else {p for p in files if not p.endswith((".json", ".md"))}
        state = self.repos.setdefault(repo, _Repo())
        sha = hashlib.sha1(repr((repo, len(state.commits), sorted(files.items()))).encode()).hexdigest()
        state.commits[sha] = {p: (bytes(d), p in lfs_set) for p, d in files.items()}
        for ref in refs:
            state.refs[ref] = sha
        return sha

    # -- request log --------------------------------------------------------------------------------------------

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (method is None or r.method == method) and contains in r.path)


    # -- routing (called from handler threads) ------------------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(Request(method, path, headers))

    def _find_lfs(self, digest: str) -> bytes | None:
        for state in self.repos.values():
            for files in state.commits.values():
                for data, _ in files.values():
                    if sha256(data) == digest:
                        return data
        return None


_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_CDN = re.compile(r"^/cdn/([0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the library's connection pool expects
    timeout = 10  # idle keep-alive connections end on their own

    @property
    def hub(self) -> FakeHub:
        return self.server.owner  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- dispatch -----------------------------------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.hub._record(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        if m := _RESOLVE.match(path):
            self._resolve(unquote(m[1]), unquote(m[2]), unquote(m[3]), head=head)
        elif (m := _TREE.match(path)) and not head:
            self._tree(unquote(m[1]), unquote(m[2]))
        elif m := _CDN.match(path):
            data = self.hub._find_lfs(m[1])
            commit = parse_qs(split.query).get("commit", [""])[0]
            if data is None:
                self._reply(404, {"X-Error-Code": "EntryNotFound"})
            else:
                # Reached by following the resolve redirect: carry the metadata the library reads from it.
                self._content(data, {"ETag": f'"{m[1]}"', "X-Repo-Commit": commit}, head=head)
        else:
            self._reply(404, {}, b"no such route")

    def _lookup(self, repo: str, revision: str) -> tuple[_Repo, str] | None:
        state = self.hub.repos.get(repo)
        if state is None:
            self._reply(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return None
        sha = revision if revision in state.commits else state.refs.get(revision)
        if sha is None:
            self._reply(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
            return None
        return state, sha

    def _resolve(self, repo: str, revision: str, filename: str, *, head: bool) -> None:
        found = self._lookup(repo, revision)
        if found is None:
            return
        state, sha = found
        if revision != sha:
            location = f"/{repo}/resolve/{sha}/{quote(filename)}"
            self._reply(307, {"Location": location, "X-Repo-Commit": sha})
            return
        entry = state.commits[sha].get(filename)
        if entry is None:
            self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            return
        data, lfs = entry
        if lfs:
            digest = sha256(data)
            self._reply(
                302,
                {
                    "Location": f"/cdn/{digest}?commit={sha}",
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_sha1(data)}"',
                },
            )
        else:
            self._content(data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha}, head=head)

    def _tree(self, repo: str, revision: str) -> None:
        found = self._lookup(repo, revision)
        if found is None:
            return
        state, sha = found
        entries = []
        for path, (data, lfs) in sorted(state.commits[sha].items()):
            entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if lfs:
                entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._reply(200, {"Content-Type": "application/json"}, json.dumps(entries).encode())

    # -- responses ----------------------------------------------------------------------------------------------

    def _content(self, data: bytes, headers: dict[str, str], *, head: bool) -> None:
        start, status = 0, 200
        if (rng := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start, status = int(m[1]), 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        headers.update({"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        cut = None if head else self.hub._next_cut()
        if cut is None:
            self._reply(status, headers, body, head=head)
            return
        send_cut(self, status, headers, body, cut)

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head and self.command != "HEAD":  # a HEAD answer has headers only
            self.wfile.write(body)


FakeHub.handler = _Handler
__all__ = ["FakeHub", "closed_port", "sha256"]
