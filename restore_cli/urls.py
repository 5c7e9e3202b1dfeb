"""Weights from http(s) URLs and Google Drive: download into restore's cache with progress and resume, verify.

`hub.fetch` hands every `url` source here (the Hugging Face logic stays in hub.py); these two modules are the only
ones that touch the network. Every failure becomes a `WeightsError` with one line that names the preset and URL.

Decisions worth knowing:

* Cache layout: `<restore cache>/urls/<host>/<id>/<filename>`. `id` is the Google Drive file or folder id, else the
  first 16 hex digits of the URL's sha256; `filename` is the preset's (for a Drive folder: the path inside it), else
  the name the server gives. A cached file is used without any request, like a pinned Hub preset.
* A transfer writes `<file>.part` plus `<file>.part.json` (what a resume needs: the validator, total size, name).
  An interrupted one resumes with `Range` and `If-Range`; a server that answers 200 instead restarts it from zero.
  The file is renamed into place only after its sha256 passed, so the cache never holds a partial or refused file.
  A per-file lock keeps two processes from writing the same `.part`.
* sha256 as for the Hub: with a sha256 in weights.toml any other file is refused and both hashes are named; the
  refused download is deleted (it never reached the cache). Without one the preset is trust-on-first-use: the first
  download records sha256, size and date in `<restore cache>/urls.lock.json`, every later download must match it,
  and each use says in one line that the preset is unpinned. A cached file that no longer matches is refused but
  left in place, as hub.py does: `restore models remove` deletes it.
* Google Drive is spoken here with httpx2 rather than through gdown: gdown hard-codes https://drive.google.com
  (it cannot be aimed at a local test server short of intercepting TLS), prints to stdout and brings requests and
  bs4. The protocol is small: `uc?export=download&id=ID` (303 to drive.usercontent.google.com), the "can't scan
  for viruses" form in front of large files, and `embeddedfolderview?id=ID` listing a folder.
  RESTORE_GDRIVE_ENDPOINT replaces https://drive.google.com (tests point it at 127.0.0.1).
* Login-only hosts (Baidu pan, MEGA, OneDrive, ...) keep the message saying where to get the file by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlencode, urljoin, urlsplit

import httpx2
from filelock import FileLock

from . import __version__
from .errors import WeightsError
from .hub import _expected, _one_line, _reason, file_sha256, note, remember_sha256, restore_cache_dir
from .presets import Source

__all__ = ["GDRIVE_ENDPOINT_ENV", "LOCK_FILE", "cached_path", "fetch", "is_manual", "manual_message", "recorded",
           "remove"]

GDRIVE_ENDPOINT_ENV = "RESTORE_GDRIVE_ENDPOINT"
LOCK_FILE = "urls.lock.json"

_GDRIVE = "https://drive.google.com"
_GDRIVE_HOSTS = {"drive.google.com", "docs.google.com", "drive.usercontent.google.com"}
# Hosts that hand files only to a logged-in browser (or a vendor client): say where to get the file instead.
_LOGIN_ONLY = ("pan.baidu.com", "yun.baidu.com", "mega.nz", "mega.co.nz", "1drv.ms", "onedrive.live.com",
               "sharepoint.com", "pan.quark.cn", "aliyundrive.com", "alipan.com", "weiyun.com")
_DRIVE_FOLDER = re.compile(r"/drive/(?:u/\d+/)?folders/([-\w]{10,})")
_DRIVE_FILE = re.compile(r"/file/(?:u/\d+/)?d/([-\w]{10,})")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CHUNK = 1 << 20
_MAX_PAGE = 4 << 20  # an HTML answer larger than this is no confirmation page or folder listing
_MAX_HOPS = 5  # Drive: file link -> confirmation page -> file, plus a restart after a refused range
_TIMEOUT = httpx2.Timeout(60.0, connect=15.0)
_TEMP_SUFFIXES = (".part", ".part.json")


@dataclass(frozen=True)
class _Target:
    """Where one url source's file comes from and where it goes in the cache."""

    url: str  # as written in weights.toml
    kind: str  # "http", "drive-file" or "drive-folder"
    folder: Path  # this source's cache folder
    filename: str | None  # path inside `folder`; None: the server names the file
    key: str  # its entry in the lock file
    drive_id: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or self.url

    @property
    def part(self) -> Path:
        return self.folder / f"{self.filename or 'unnamed'}.part"

    @property
    def lock(self) -> Path:
        # Outside urls/: filelock leaves its (empty) file behind, and the cache tree should hold only weights
        # and resumable parts. Deleting a lock file on release would race with a process waiting on it.
        return restore_cache_dir() / "locks" / f"url-{hashlib.sha256(self.key.encode()).hexdigest()[:24]}.lock"


@dataclass
class _Resume:
    """The `.part.json` beside a `.part`: enough to ask for the rest of the same file."""

    key: str
    validator: str | None  # strong ETag or Last-Modified, sent as If-Range: a changed file then comes back whole
    total: int | None  # the whole file's size, when the server said
    name: str | None  # the server's file name, for sources without a filename


# --------------------------------------------------------------------------------------------------------------
# Public API (called through hub.fetch / cached_path / remove)


def fetch(source: Source, *, offline: bool, progress: bool, name: str | None) -> Path:
    """Local path of a url source's file, downloaded into the cache first unless it is there; sha256 checked.

    `offline` is final (hub resolves HF_HUB_OFFLINE). Raises WeightsError for anything that prevents use.
    """
    label = name or source.filename or source.url or "these weights"
    target = _target(source)
    if target is None:
        raise WeightsError(manual_message(source, name))
    if target.kind == "drive-folder" and target.filename is None:
        raise WeightsError(f"{label}: {target.url} is a Google Drive folder; the preset must name the file in it "
                           "(filename = \"path/in/folder\")")
    expected = _expected(source.sha256, label)
    path = _cached(target)
    if path is not None:
        digest = _check_cached(path, target, expected, label, name)
    elif offline:
        hint = f"run `restore models download {name}` while online" if name else "run it once while online"
        raise WeightsError(f"{label} is not in the download cache and offline mode is on; {hint}")
    else:
        path, digest = _download(target, expected=expected, label=label, name=name, progress=progress)
    if expected is None:
        record = recorded(source) or {}
        note(f"{label} is unpinned (no sha256 in weights.toml); it must match the sha256 recorded on its "
             f"first download ({record.get('date', 'today')}): {digest[:16]}...")
    return path


def cached_path(source: Source) -> Path | None:
    """The cached file of a url source, or None (no network, no hashing)."""
    try:
        target = _target(source)
    except WeightsError:
        return None
    return None if target is None else _cached(target)


def remove(source: Source) -> bool:
    """Delete a url source's cached file and any partial download; True if something was deleted.

    Its lock-file entry stays: a preset removed and downloaded again must still be the file first seen.
    """
    try:
        target = _target(source)
    except WeightsError:
        return False
    if target is None:
        return False
    removed = False
    for path in (_cached(target), target.part, _sidecar(target.part)):
        if path is not None and path.is_file():
            path.unlink()
            removed = True
    _prune(target.part.parent, restore_cache_dir() / "urls")
    return removed


def is_manual(source: Source) -> bool:
    """True for a url source restore cannot download (a login-only host, not http(s)): the user fetches it."""
    try:
        return _target(source) is None
    except WeightsError:
        return False


def manual_message(source: Source, name: str | None) -> str:
    what = name or source.filename or "these weights"
    msg = (f"{what} cannot be downloaded automatically: the file is hosted at {source.url}; download it by hand "
           "and pass it with --model PATH")
    if source.note:
        msg += f" ({source.note})"
    return _one_line(msg)


def recorded(source: Source) -> dict[str, Any] | None:
    """The lock-file entry of an unpinned url source ({sha256, size, date, url, preset}), if downloaded once."""
    try:
        target = _target(source)
    except WeightsError:
        return None
    return None if target is None else _read_lock().get(target.key)


# --------------------------------------------------------------------------------------------------------------
# Sources -> cache locations


def _target(source: Source) -> _Target | None:
    """None for sources the user must download by hand; WeightsError for a bad filename."""
    url = (source.url or "").strip()
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or _login_only(host):
        return None
    inner = _inner_path(source.filename, url) if source.filename else None
    root = restore_cache_dir() / "urls"
    if host in _GDRIVE_HOSTS:
        if m := _DRIVE_FOLDER.search(parts.path):
            key = f"{url}#{inner}" if inner else url
            return _Target(url, "drive-folder", root / "drive.google.com" / m[1], inner, key, m[1])
        m = _DRIVE_FILE.search(parts.path)
        file_id = m[1] if m else parse_qs(parts.query).get("id", [""])[0]
        if re.fullmatch(r"[-\w]{10,}", file_id):
            return _Target(url, "drive-file", root / "drive.google.com" / file_id, inner, url, file_id)
        return None  # some other Drive page (a search, a shared drive): nothing to download from
    folder = root / re.sub(r"[^\w.-]", "_", host) / hashlib.sha256(url.encode()).hexdigest()[:16]
    return _Target(url, "http", folder, inner or _name_from_url(url), url)


def _login_only(host: str) -> bool:
    return any(host == h or host.endswith("." + h) for h in _LOGIN_ONLY)


def _inner_path(filename: str, url: str) -> str:
    parts = filename.replace("\\", "/").strip("/").split("/")
    if any(p in ("", ".", "..") or ":" in p for p in parts):
        raise WeightsError(f"bad filename {filename!r} for {url} in the presets: it must be a relative path "
                           "without empty, '.' or '..' parts")
    return "/".join(parts)


def _name_from_url(url: str) -> str | None:
    last = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return _safe_name(last) if "." in last else None


def _safe_name(name: str) -> str | None:
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip().replace("\x00", "")
    return None if name in ("", ".", "..") or name.endswith(_TEMP_SUFFIXES) else name


def _sidecar(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _cached(target: _Target) -> Path | None:
    if target.filename:
        path = target.folder / target.filename
        return path if path.is_file() else None
    if target.kind == "drive-folder" or not target.folder.is_dir():
        return None
    # Named by the server on download: the one finished file in this source's folder.
    found = [p for p in target.folder.iterdir() if p.is_file() and not p.name.endswith(_TEMP_SUFFIXES)]
    return found[0] if len(found) == 1 else None


def _prune(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            return
        folder = folder.parent


# --------------------------------------------------------------------------------------------------------------
# Download


def _download(target: _Target, *, expected: str | None, label: str, name: str | None,
              progress: bool) -> tuple[Path, str]:
    try:
        target.lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the download cache {target.lock.parent}: {_reason(exc)}") from exc
    with FileLock(target.lock):
        done = _cached(target)
        if done is not None:  # another process finished it while this one waited for the lock
            return done, _check_cached(done, target, expected, label, name)
        try:
            with httpx2.Client(follow_redirects=True, timeout=_TIMEOUT,
                               headers={"User-Agent": f"restore-cli/{__version__}",
                                        "Accept-Encoding": "identity"}) as client:
                url = _start_url(client, target, label)
                digest, size, server_name = _transfer(client, url, target, label, progress)
            return _accept(target, digest, size, server_name, expected=expected, label=label, name=name), digest
        except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
            raise _transport_error(exc, target, label) from exc
        finally:
            _prune(target.part.parent, restore_cache_dir() / "urls")  # folders a failed download left empty


def _start_url(client: httpx2.Client, target: _Target, label: str) -> str:
    if target.kind == "http":
        return target.url
    file_id = target.drive_id or ""
    if target.kind == "drive-folder":
        file_id = _drive_find(client, target, label)
    return f"{_drive_endpoint()}/uc?{urlencode({'export': 'download', 'id': file_id})}"


def _transfer(client: httpx2.Client, url: str, target: _Target, label: str,
              progress: bool) -> tuple[str, int, str | None]:
    """Stream `url` into the target's .part (resuming it when possible); (sha256, size, server's file name)."""
    part = target.part
    state = _load_resume(part, target.key)
    for _ in range(_MAX_HOPS):
        offset = part.stat().st_size if state is not None and part.is_file() else 0
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if state is not None and state.validator:
                headers["If-Range"] = state.validator
        with client.stream("GET", url, headers=headers) as r:
            if r.status_code == 416 and offset:  # a stale part (the file shrank or is already whole): start over
                _discard(part)
                state = None
                continue
            _check_status(r, target, label)
            if r.headers.get("content-type", "").lower().startswith("text/html"):
                page = _read_page(r)
                if target.kind == "http":  # a part from an earlier try stays: it is still the file's start
                    raise _html_error(target, label, str(r.url))
                url = _drive_next(page, str(r.url), target, label)
                continue
            if r.status_code == 206 and offset:
                resumed = _resumed_state(r, offset, state)
                if resumed is None:  # not the range asked for, or another file: start over
                    _discard(part)
                    state = None
                    continue
                state = resumed
            else:
                offset = 0  # a 200 to a range request: the server sends the whole file again
                state = _fresh_state(r, target)
            _save_resume(part, state)
            return _receive(r, part, offset, state, target, label, progress)
    raise WeightsError(f"cannot download {label}: {target.host} kept answering with pages instead of the file "
                       f"({target.url}); download it by hand and pass it with --model PATH")


def _receive(r: httpx2.Response, part: Path, offset: int, state: _Resume, target: _Target, label: str,
             progress: bool) -> tuple[str, int, str | None]:
    h = hashlib.sha256()
    if offset:  # the resumed file's hash covers the bytes already on disk
        try:
            with part.open("rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    h.update(block)
        except OSError as exc:
            raise WeightsError(f"cannot read the partial download {part}: {_reason(exc)}") from exc
    size = offset
    try:
        with part.open("ab" if offset else "wb") as f, _progress_bar(label, state.total, offset, progress) as advance:
            for chunk in r.iter_bytes():  # as received: a chunk size would buffer bytes an error then loses
                if size == 0 and _looks_like_html(chunk):
                    raise _html_error(target, label, str(r.url))
                _write(f, chunk)
                h.update(chunk)
                size += len(chunk)
                advance(len(chunk))
            f.flush()
            os.fsync(f.fileno())  # the rename that follows must not publish a file still in the page cache
    except WeightsError:
        _discard(part)
        raise
    except httpx2.TransportError as exc:
        raise WeightsError(f"download of {label} from {target.host} was interrupted after {_size(size)}"
                           f"{' of ' + _size(state.total) if state.total else ''} ({_reason(exc) or type(exc).__name__}"
                           "); the partial file is kept, run the command again to resume") from exc
    except OSError as exc:
        raise WeightsError(f"cannot write {label} to {part}: {_reason(exc)}; the partial file is kept, free some "
                           "space and run the command again to resume") from exc
    if state.total is not None and size != state.total:
        if size > state.total:
            _discard(part)
        raise WeightsError(f"download of {label} from {target.host} ended after {_size(size)} of "
                           f"{_size(state.total)}; run the command again to resume")
    return h.hexdigest(), size, state.name


def _write(f: BinaryIO, chunk: bytes) -> None:
    f.write(chunk)


def _accept(target: _Target, digest: str, size: int, server_name: str | None, *, expected: str | None,
            label: str, name: str | None) -> Path:
    """Check a finished .part against the pinned or recorded sha256 and move it into place."""
    part = target.part
    if expected is not None and digest != expected:
        _discard(part)
        raise WeightsError(f"checksum mismatch for {label} from {target.url}: expected sha256 {expected}, the "
                           f"download has {digest}; refusing it, nothing was kept")
    record = None if expected is not None else _read_lock().get(target.key)
    if record is not None and record.get("sha256") != digest:
        _discard(part)
        raise WeightsError(
            f"checksum mismatch for {label} from {target.url}: its first download ({record.get('date', '?')}) "
            f"had sha256 {record.get('sha256')}, this one has {digest}; refusing it, nothing was kept (if the "
            f"file was meant to change, delete its entry from {restore_cache_dir() / LOCK_FILE})"
        )
    filename = target.filename or server_name or "weights.bin"
    final = target.folder / filename
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
    except OSError as exc:
        raise WeightsError(f"cannot move {label} into the cache at {final}: {_reason(exc)}") from exc
    _sidecar(part).unlink(missing_ok=True)
    remember_sha256(final, digest)
    if expected is None and record is None:
        _record(target.key, {"sha256": digest, "size": size, "date": dt.date.today().isoformat(),
                             "url": target.url, "preset": name})
    return final


def _check_cached(path: Path, target: _Target, expected: str | None, label: str, name: str | None) -> str:
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read {label} at {path}: {_reason(exc)}") from exc
    remedy = f"`restore models remove {name}` deletes it" if name else f"delete {path} to download it again"
    if expected is not None and digest != expected:
        raise WeightsError(f"checksum mismatch for {label} ({path}): expected sha256 {expected}, got {digest}; "
                           f"refusing to load it (the file was left in place; {remedy})")
    if expected is None:
        record = _read_lock().get(target.key)
        if record is None:  # put there by hand, or the lock file was lost: this is the first use
            _record(target.key, {"sha256": digest, "size": path.stat().st_size,
                                 "date": dt.date.today().isoformat(), "url": target.url, "preset": name})
        elif record.get("sha256") != digest:
            raise WeightsError(f"checksum mismatch for {label} ({path}): its first download "
                               f"({record.get('date', '?')}) had sha256 {record.get('sha256')}, the file now has "
                               f"{digest}; refusing to load it (the file was left in place; {remedy})")
    return digest


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _sidecar(part).unlink(missing_ok=True)


# -- resume state ----------------------------------------------------------------------------------------------


def _load_resume(part: Path, key: str) -> _Resume | None:
    try:
        data = json.loads(_sidecar(part).read_text(encoding="utf-8"))
        state = _Resume(**data)
    except (OSError, ValueError, TypeError):
        state = None
    if state is None or state.key != key or not part.is_file():
        _discard(part)  # a part nobody can vouch for is worth less than a clean restart
        return None
    return state


def _save_resume(part: Path, state: _Resume) -> None:
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
        _sidecar(part).write_text(json.dumps(asdict(state)), encoding="utf-8")
    except OSError as exc:
        raise WeightsError(f"cannot write to the download cache {part.parent}: {_reason(exc)}") from exc


def _fresh_state(r: httpx2.Response, target: _Target) -> _Resume:
    total = None
    length = r.headers.get("content-length", "")
    if length.isdigit() and r.headers.get("content-encoding", "identity").lower() == "identity":
        total = int(length)
    return _Resume(target.key, _validator(r), total, _server_name(r))


def _resumed_state(r: httpx2.Response, offset: int, state: _Resume | None) -> _Resume | None:
    m = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", "").strip())
    if state is None or m is None or int(m[1]) != offset:
        return None
    total = int(m[3]) if m[3] != "*" else None
    if state.total is not None and total is not None and total != state.total:
        return None
    return _Resume(state.key, state.validator, total or state.total, state.name)


def _validator(r: httpx2.Response) -> str | None:
    etag = r.headers.get("etag")
    if etag and not etag.startswith("W/"):  # If-Range takes only a strong ETag
        return etag
    return r.headers.get("last-modified")


def _server_name(r: httpx2.Response) -> str | None:
    disposition = r.headers.get("content-disposition", "")
    if m := re.search(r"filename\*\s*=\s*[\w-]+'[^']*'([^;]+)", disposition):
        return _safe_name(unquote(m[1].strip().strip('"')))
    if m := re.search(r'filename\s*=\s*"([^"]+)"|filename\s*=\s*([^;\s]+)', disposition):
        return _safe_name(m[1] or m[2])
    return _name_from_url(str(r.url))


# -- HTTP answers ----------------------------------------------------------------------------------------------


def _check_status(r: httpx2.Response, target: _Target, label: str) -> None:
    if r.status_code < 300:
        return
    status = f"HTTP {r.status_code} {r.reason_phrase}".strip()
    if r.status_code in (401, 403):
        hint = "the file needs a login or is not shared publicly; download it by hand and pass it with --model PATH"
    elif r.status_code in (404, 410):
        hint = "the file is gone or the link changed; check the preset's url"
    elif r.status_code == 429 or r.status_code >= 500:
        hint = "the server is busy or failing; try again later"
    else:
        hint = "download it by hand and pass it with --model PATH"
    raise WeightsError(f"cannot download {label} from {target.url}: {r.url.host} answered {status}; {hint}")


def _read_page(r: httpx2.Response) -> str:
    body = bytearray()
    for chunk in r.iter_bytes(_CHUNK):
        body += chunk
        if len(body) > _MAX_PAGE:
            break
    return body.decode(r.encoding or "utf-8", errors="replace")


def _looks_like_html(chunk: bytes) -> bool:
    head = chunk[:64].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _html_error(target: _Target, label: str, url: str) -> WeightsError:
    return WeightsError(f"cannot download {label}: {urlsplit(url).hostname} answered with a web page instead of the "
                        f"file ({target.url}); it may need a login, or the link points at a page: download it by "
                        "hand and pass it with --model PATH")


def _transport_error(exc: httpx2.HTTPError | httpx2.InvalidURL, target: _Target, label: str) -> WeightsError:
    try:
        host = exc.request.url.host or target.host if isinstance(exc, httpx2.HTTPError) else target.host
    except RuntimeError:  # no request attached
        host = target.host
    reason = _reason(exc) or type(exc).__name__
    if isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        msg = f"cannot download {label}: cannot connect to {host} ({reason}); check the network connection"
    elif isinstance(exc, httpx2.TimeoutException):
        msg = f"cannot download {label}: {host} did not answer in time ({reason}); try again later"
    elif isinstance(exc, httpx2.TooManyRedirects):
        msg = f"cannot download {label}: {target.url} redirects too often ({reason})"
    elif isinstance(exc, (httpx2.InvalidURL, httpx2.UnsupportedProtocol)):
        msg = f"cannot download {label}: bad url {target.url} ({reason})"
    else:
        msg = f"cannot download {label} from {target.url}: {reason}"
    return WeightsError(_one_line(msg))


# -- Google Drive ----------------------------------------------------------------------------------------------


def _drive_endpoint() -> str:
    return (os.environ.get(GDRIVE_ENDPOINT_ENV) or _GDRIVE).rstrip("/")


class _Page(HTMLParser):
    """What a Drive page holds for us: links with their text, forms with hidden fields, title, error text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []
        self.forms: dict[str, tuple[str, dict[str, str]]] = {}
        self.title = ""
        self.error = ""
        self._href: str | None = None
        self._text: list[str] = []
        self._form: str | None = None
        self._capture: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a":
            self._href, self._text = a.get("href", ""), []
        elif tag == "form":
            self._form = a.get("id", "")
            self.forms[self._form] = (a.get("action", ""), {})
        elif tag == "input" and self._form is not None and a.get("type", "").lower() == "hidden" and a.get("name"):
            self.forms[self._form][1][a["name"]] = a.get("value", "")
        elif tag == "title":
            self._capture = "title"
        elif "uc-error-subcaption" in a.get("class", "").split():
            self._capture = "error"

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join("".join(self._text).split())))
            self._href = None
        elif tag == "form":
            self._form = None
        elif tag in ("title", "p", "div"):
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)
        if self._capture == "title":
            self.title += data
        elif self._capture == "error":
            self.error += data


def _drive_next(html: str, base: str, target: _Target, label: str) -> str:
    """The URL behind Drive's "can't scan this file for viruses" page, or why there is none."""
    page = _Page(html)
    if "download-form" in page.forms:
        action, fields = page.forms["download-form"]
        url = urljoin(base, action)
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} | fields
        return url.split("?", 1)[0] + "?" + urlencode(query)
    for href, _ in page.links:  # the older page: a "Download anyway" link carrying confirm=
        if "export=download" in href and "confirm=" in href:
            return urljoin(base, href)
    if (urlsplit(base).hostname or "").startswith("accounts."):
        reason = "it needs a Google login: the file is not shared publicly"
    else:
        reason = " ".join((page.error or page.title or "no download link on the page").split())
    raise WeightsError(f"cannot download {label}: Google Drive did not hand out the file ({reason}); open "
                       f"{target.url} in a browser, download it by hand and pass it with --model PATH")


def _drive_find(client: httpx2.Client, target: _Target, label: str) -> str:
    """Walk the preset's path (`sub/dir/file.pth`) down the folder listings; the file's Drive id."""
    steps = (target.filename or "").split("/")
    folder = target.drive_id or ""
    for depth, step in enumerate(steps):
        entries = _drive_list(client, folder, target, label)
        is_last = depth == len(steps) - 1
        found = [i for n, i, is_folder in entries if n == step and is_folder != is_last]
        if len(found) != 1:
            where = "/".join(steps[:depth]) or "the folder"
            names = ", ".join(sorted({n + ("/" if f else "") for n, _, f in entries})[:12])
            problem = "is not" if not found else "is more than once"
            raise WeightsError(f"cannot download {label}: {'/'.join(steps[: depth + 1])} {problem} in the Google "
                               f"Drive folder {target.url} ({where} holds: {names or 'nothing visible'})")
        folder = found[0]
    return folder


def _drive_list(client: httpx2.Client, folder_id: str, target: _Target, label: str) -> list[tuple[str, str, bool]]:
    with client.stream("GET", f"{_drive_endpoint()}/embeddedfolderview", params={"id": folder_id}) as r:
        _check_status(r, target, label)
        page = _Page(_read_page(r))
    entries: list[tuple[str, str, bool]] = []
    for href, text in page.links:
        path = urlsplit(href).path
        if m := _DRIVE_FOLDER.search(path):
            entries.append((text, m[1], True))
        elif m := _DRIVE_FILE.search(path):
            entries.append((text, m[1], False))
    if not entries and (urlsplit(str(r.url)).hostname or "").startswith("accounts."):
        raise WeightsError(f"cannot download {label}: the Google Drive folder {target.url} needs a login (not "
                           "shared publicly); download the file by hand and pass it with --model PATH")
    return entries


# --------------------------------------------------------------------------------------------------------------
# Lock file (trust on first use)


def _read_lock() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((restore_cache_dir() / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _record(key: str, entry: dict[str, Any]) -> None:
    target = restore_cache_dir() / LOCK_FILE
    tmp = target.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.with_name(LOCK_FILE + ".lock")):  # read-modify-write: one process at a time
            data = _read_lock()
            data[key] = entry
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, target)  # atomic: a reader never sees half a file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"cannot record the sha256 of {entry.get('preset') or key} in {target}: "
                           f"{_reason(exc)}") from exc


# --------------------------------------------------------------------------------------------------------------
# Output


@contextmanager
def _progress_bar(label: str, total: int | None, done: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    # Transient: the bar goes when the file is in; off a terminal rich draws nothing at all.
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"
