"""Weights from the Hugging Face Hub: fetch, verify (sha256), locate and remove cached files.

The front door for every preset source: `fetch`, `cached_path`, `is_cached` and `remove` take any `Source`; `url`
sources (plain http(s), GitHub releases, Google Drive) are handed to `urls.py`, the only other module that
touches the network. Hub traffic goes only through `huggingface_hub`, so the standard cache (`HF_HOME` /
`HF_HUB_CACHE`), `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` behave as users expect from other Hugging Face
tools. Every failure becomes a `WeightsError` with one line that names the repo and file.

Decisions worth knowing:

* A preset's file, once cached, is used without asking the Hub (no request at all), even when weights.toml names
  a tag or a branch (unpinned entries say `main`): a preset must give the same weights on every run, and
  `restore models remove` + `download` refreshes it deliberately. `hf://` URIs naming a branch or tag (default
  `main`) are re-resolved whenever online, like other Hugging Face tools do; a commit sha is never re-checked.
* A sha256 mismatch refuses the file and deletes nothing, not even our own cached copy: the fault may lie with
  weights.toml rather than the file, and deleting would then cost a multi-GB download for nothing. The refusal
  is repeated on every use, so the file is never loaded; `remove()` deletes it when the user asks.
* Computed hashes are remembered in a small JSON file in the restore cache dir, keyed by the resolved path and
  (size, mtime, ctime, inode): hashing a multi-GB checkpoint on every run costs seconds, re-stat'ing costs nothing.
* A file that did not arrive whole never reaches the cache: huggingface_hub downloads into a process-unique
  `<blob>.<id>.incomplete`, checks the size, renames it into place and deletes the partial file on any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, HfUri, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub import parse_hf_uri as _parse_canonical_hf_uri
from huggingface_hub import try_to_load_from_cache as _try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HfUriError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils.tqdm import tqdm as _HfTqdm

from . import presets
from .errors import UsageError, WeightsError
from .presets import Preset, Source

__all__ = [
    "WEIGHT_SUFFIXES",
    "HfRef",
    "HubModel",
    "cached_path",
    "fetch",
    "fetch_hf_uri",
    "fetch_preset",
    "file_sha256",
    "is_cached",
    "is_offline",
    "parse_hf_uri",
    "remember_sha256",
    "remove",
    "restore_cache_dir",
]

# Weight file suffixes, best first (as loading.WEIGHT_SUFFIXES, not imported: that module pulls in torch):
# safetensors cannot run code on load, the pickle-based formats can.
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")

_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}
# HTTP statuses the library retries with backoff; the pre-flight HEAD leaves those to it.
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_HUB_ERRORS: tuple[type[BaseException], ...] = (
    HfHubHTTPError,
    EntryNotFoundError,
    FileMetadataError,
    httpx2.HTTPError,
    OSError,  # includes OfflineModeIsEnabled (ConnectionError) and the library's size-consistency check
    ValueError,  # invalid repo ids / filenames (HFValidationError)
)
_STAMPS_FILE = "sha256-stamps.json"
_MAX_STAMPS = 512


@dataclass(frozen=True)
class HfRef:
    """A parsed `hf://` URI: a whole repo (`filename` None) or one file in it."""

    repo: str
    filename: str | None = None
    revision: str | None = None

    def uri(self) -> str:
        path = f"hf://{self.repo}" + (f"/{self.filename}" if self.filename else "")
        return path + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class HubModel:
    """Weights resolved from an `hf://` URI. `arch`/`kwargs` come from the repo's config.json (repo form only)."""

    path: Path
    repo: str
    filename: str
    revision: str  # the commit sha both config and weights were read at
    arch: str | None = None
    kwargs: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------------------
# Public API


def is_offline(offline: bool = False) -> bool:
    """True when no request may be made: the explicit flag, or HF_HUB_OFFLINE (checked now, not at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return offline or constants.is_offline_mode() or env.upper() in _TRUE


def fetch(source: Source, *, offline: bool = False, progress: bool = True, name: str | None = None) -> Path:
    """Local path of a preset's weights file, downloading it (hf and url sources) when not cached; sha256 checked.

    `name` (the preset name) improves messages and is recorded for unpinned url presets. Raises WeightsError for
    anything that prevents use, including url sources on login-only hosts (the message says where to get them).
    """
    if source.kind == "bundled":
        return _fetch_bundled(source)
    if source.kind == "url":
        from . import urls  # imported here: urls builds on this module

        return urls.fetch(source, offline=is_offline(offline), progress=progress, name=name)
    if source.kind != "hf" or not source.repo or not source.filename:
        raise WeightsError(f"weights source for {name or 'this preset'} is incomplete: {source}")
    revision = source.revision or constants.DEFAULT_REVISION
    uri = HfRef(source.repo, source.filename, revision).uri()
    path = _download(
        source.repo,
        source.filename,
        revision,
        pinned=True,  # see the module docstring: a cached preset file is never replaced behind the user's back
        offline=offline,
        progress=progress,
        expected_sha256=_expected(source.sha256, uri),
        offline_hint=f"run `restore models download {name}` while online"
        if name
        else "run `restore models download` for this preset while online",
    )
    remedy = f"`restore models remove {name}` deletes it" if name else "remove it from the Hugging Face cache"
    _verify(path, source.sha256, uri, remedy)
    if source.sha256 is None:
        note(f"{name or uri} is unpinned (no sha256 in weights.toml, revision {revision}): its file is not checked")
    return path


def fetch_preset(preset: Preset, *, offline: bool = False, progress: bool = True) -> Path:
    """`fetch` for a preset, with the preset name in every message."""
    return fetch(preset.source, offline=offline, progress=progress, name=preset.name)


def cached_path(source: Source) -> Path | None:
    """Where the source's file is on disk if it is already there (no network, no hashing)."""
    if source.kind == "bundled" and source.filename:
        path = presets.BUNDLED_DIR / source.filename
        return path if path.is_file() else None
    if source.kind == "hf" and source.repo and source.filename:
        return _cached(source.repo, source.filename, source.revision or constants.DEFAULT_REVISION)
    if source.kind == "url":
        from . import urls

        return urls.cached_path(source)
    return None


def is_cached(source: Source) -> bool:
    """True when `fetch` would not need the network (the file may still fail its checksum)."""
    return cached_path(source) is not None


def remove(source: Source) -> bool:
    """Delete our cached copy of an hf or url source; True if something was deleted.

    hf: only this file's snapshot entry goes, plus its blob when no other snapshot uses it: other files of the
    same repo and revision stay. url: the file in restore's cache and any partial download. Bundled files are
    never deleted (they are not ours to remove).
    """
    if source.kind == "url":
        from . import urls

        return urls.remove(source)
    if source.kind != "hf" or not source.repo or not source.filename:
        return False
    pointer = cached_path(source)
    if pointer is None:
        return False
    _remove_cached(source.repo, pointer)
    return True


def parse_hf_uri(uri: str) -> HfRef:
    """Parse `hf://owner/repo[@revision]`, `hf://owner/repo/path/file[@revision]` or the library's canonical
    `hf://owner/repo@revision/path/file`. Raises UsageError (it is a bad --model value)."""
    if not uri.startswith(constants.HF_PROTOCOL):
        raise UsageError(f"not a Hugging Face URI: {uri!r} (expected hf://owner/repo[/path/to/file][@revision])")
    body = uri[len(constants.HF_PROTOCOL) :].strip()
    segments = body.split("/")
    if segments[0] in constants.HF_URI_TYPE_PREFIXES and segments[0] != "models":
        raise UsageError(f"{uri}: only model repos can hold weights here, not {segments[0]}")
    if segments[0] == "models":
        segments = segments[1:]
        body = "/".join(segments)
    try:
        if len(segments) > 1 and "@" not in segments[1] and "@" in body:
            # This CLI's form puts the revision last: hf://owner/repo/path/file.safetensors@revision.
            # An '@' inside a file name then needs the canonical form (hf://owner/repo@main/file@1.pth).
            head, revision = body.rsplit("@", 1)
            parts = head.split("/", 2)
            parsed = HfUri(
                type="model",
                id="/".join(parts[:2]),
                revision=revision,
                path_in_repo=parts[2] if len(parts) > 2 else "",
                _raw=uri,
            )
        else:
            parsed = _parse_canonical_hf_uri(constants.HF_PROTOCOL + body)
    except (HfUriError, ValueError) as exc:
        raise UsageError(f"bad Hugging Face URI {uri!r}: {_reason(exc)}") from exc
    path = parsed.path_in_repo.strip("/")
    if any(part in ("", ".", "..") for part in path.split("/")) and path:
        raise UsageError(f"bad Hugging Face URI {uri!r}: the file path must not contain empty, '.' or '..' parts")
    return HfRef(parsed.id, path or None, parsed.revision)


def fetch_hf_uri(uri: str, *, offline: bool = False, progress: bool = True) -> HubModel:
    """Resolve an `hf://` --model value to a local weights file.

    File form: that file, arch/kwargs None (the caller infers them). Repo form: the repo's config.json must name
    `arch` (and optionally `kwargs`, `weights`: the file to load, `sha256`: its checksum); without `weights` the
    single weights file in the repo is used, `.safetensors` preferred over `.pth/.pt/.ckpt/.bin`.
    """
    ref = parse_hf_uri(uri)
    revision = ref.revision or constants.DEFAULT_REVISION
    hint = "run the command once while online to download it"
    # An explicit commit cannot move: the cached copy is always right. Branches and tags are re-checked online.
    pinned = _COMMIT.fullmatch(revision) is not None
    if ref.filename:
        path = _download(ref.repo, ref.filename, revision, pinned=pinned, offline=offline, progress=progress,
                         expected_sha256=None, offline_hint=hint)
        return HubModel(path, ref.repo, ref.filename, _commit_of(path, ref.filename))

    config_path = _download(ref.repo, "config.json", revision, pinned=pinned, offline=offline, progress=False,
                            expected_sha256=None, offline_hint=hint, missing_hint=(
                                f"the repo form needs a config.json naming arch and kwargs; "
                                f"or point --model at the weights file: hf://{ref.repo}/FILE"))
    # Read the weights at the very commit the config came from, even if the branch moves in between.
    commit = _commit_of(config_path, "config.json")
    arch, kwargs, weights, sha256 = _read_config(config_path, ref.uri())
    if weights is None:
        weights = _pick_weights(_list_repo_files(ref.repo, commit, config_path, offline=offline), ref)
    file_uri = HfRef(ref.repo, weights, commit).uri()
    path = _download(ref.repo, weights, commit, pinned=True, offline=offline, progress=progress,
                     expected_sha256=_expected(sha256, file_uri), offline_hint=hint)
    _verify(path, sha256, file_uri, "remove it from the Hugging Face cache")
    return HubModel(path, ref.repo, weights, commit, arch, kwargs)


def restore_cache_dir() -> Path:
    """restore's own small cache (sha256 stamps): $RESTORE_CACHE_DIR, else $XDG_CACHE_HOME/restore."""
    explicit = os.environ.get("RESTORE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "restore"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (resolved path, size, mtime, ctime, inode) so unchanged files hash once."""
    real = path.resolve()
    before = _signature(real)
    stamps = _load_stamps()
    hit = stamps.get(str(real))
    if isinstance(hit, list) and len(hit) == 5 and hit[:4] == before and _SHA256.fullmatch(str(hit[4])):
        return str(hit[4])
    digest = _hash_file(real)
    if _signature(real) == before:  # only remember a hash of a file that did not change while being read
        stamps[str(real)] = [*before, digest]
        _save_stamps(stamps)
    return digest


def remember_sha256(path: Path, digest: str) -> None:
    """Tell `file_sha256` the hash of a file just written (hashed while downloading), so it is not read again."""
    real = path.resolve()
    stamps = _load_stamps()
    stamps[str(real)] = [*_signature(real), digest]
    _save_stamps(stamps)


# --------------------------------------------------------------------------------------------------------------
# Download


class _QuietTqdm(_HfTqdm):
    """The library's progress bar, always disabled (progress=False)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _download(
    repo: str,
    filename: str,
    revision: str,
    *,
    pinned: bool,
    offline: bool,
    progress: bool,
    expected_sha256: str | None,
    offline_hint: str,
    missing_hint: str | None = None,
) -> Path:
    uri = HfRef(repo, filename, revision).uri()
    cached = _cached(repo, filename, revision)
    if cached is not None and (pinned or is_offline(offline)):
        return cached
    if is_offline(offline):
        raise WeightsError(f"{uri} is not in the local Hugging Face cache and offline mode is on; {offline_hint}")

    # Pre-flight HEAD without retries. hf_hub_download retries an unreachable Hub with backoff for ~25 s before
    # failing; a refused connection or a 404 should fail at once. It also lets a sha256 mismatch be refused
    # before a large download: for LFS files (all weights) the Hub's ETag is the file's sha256.
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision))
    except _HUB_ERRORS as exc:
        unreachable = isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, OfflineModeIsEnabled))
        if unreachable and cached is not None:
            return cached  # keep using the copy we have of this branch, as the library would
        if unreachable or not _transient(exc):
            raise _translate(exc, uri, repo, filename, revision, offline_hint, missing_hint) from exc
        meta = None  # a slow or overloaded Hub: hf_hub_download retries it with backoff
    hub_sha256 = meta.etag if meta is not None and meta.etag and _SHA256.fullmatch(meta.etag) else None
    if expected_sha256 and hub_sha256 and hub_sha256 != expected_sha256:
        raise WeightsError(
            f"checksum mismatch for {uri}: the Hub serves sha256 {hub_sha256} but {expected_sha256} is "
            "expected; refusing to download it"
        )

    try:
        local = hf_hub_download(repo, filename, revision=revision, tqdm_class=None if progress else _QuietTqdm)
    except _HUB_ERRORS as exc:
        raise _translate(exc, uri, repo, filename, revision, offline_hint, missing_hint) from exc
    return Path(local)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in _TRANSIENT_STATUS
    return isinstance(exc, httpx2.TransportError)


def _cached(repo: str, filename: str, revision: str) -> Path | None:
    try:
        found = _try_to_load_from_cache(repo, filename, revision=revision)
    except ValueError:  # invalid repo id or filename: certainly not cached
        return None
    return Path(found) if isinstance(found, str) else None  # may also be the "known not to exist" sentinel


def _commit_of(pointer: Path, filename: str) -> str:
    """Commit sha of a snapshot file: `.../snapshots/<commit>/<filename>`."""
    return pointer.parents[len(filename.split("/")) - 1].name


def _translate(
    exc: BaseException,
    uri: str,
    repo: str,
    filename: str,
    revision: str,
    offline_hint: str,
    missing_hint: str | None = None,
) -> WeightsError:
    """One line for the user out of whatever huggingface_hub / httpx2 raised."""
    endpoint = constants.ENDPOINT
    if isinstance(exc, GatedRepoError):
        msg = f"cannot fetch {uri}: {repo} is gated; accept its terms on the Hub and set HF_TOKEN"
    elif isinstance(exc, RepositoryNotFoundError):
        msg = f"cannot fetch {uri}: repository {repo} not found on {endpoint} (if it is private, set HF_TOKEN)"
    elif isinstance(exc, RevisionNotFoundError):
        msg = f"cannot fetch {uri}: revision {revision!r} not found in {repo}"
    elif isinstance(exc, RemoteEntryNotFoundError):
        msg = f"cannot fetch {uri}: {filename} not found in {repo} at revision {revision}"
        if missing_hint:
            msg += f"; {missing_hint}"
    elif isinstance(exc, OfflineModeIsEnabled) or (isinstance(exc, LocalEntryNotFoundError) and is_offline()):
        msg = f"{uri} is not in the local Hugging Face cache and offline mode is on; {offline_hint}"
    elif isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        # "Not cached and the Hub failed": the cause says how it failed.
        return _translate(exc.__cause__, uri, repo, filename, revision, offline_hint, missing_hint)
    elif isinstance(exc, LocalEntryNotFoundError):
        msg = f"cannot fetch {uri}: the Hub could not be reached and there is no cached copy; {offline_hint}"
    elif isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "error"
        msg = f"cannot fetch {uri}: {endpoint} answered HTTP {status} ({_reason(exc)})"
    elif isinstance(exc, FileMetadataError):
        msg = (f"cannot fetch {uri}: {endpoint} does not answer like a Hugging Face Hub (no commit or ETag "
               "header); check HF_ENDPOINT and any proxy")
    elif isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout)):
        msg = (f"cannot fetch {uri}: cannot connect to {endpoint} ({_reason(exc) or type(exc).__name__}); "
               "check the network connection (and HF_ENDPOINT if set)")
    elif isinstance(exc, httpx2.TimeoutException):
        msg = f"cannot fetch {uri}: {endpoint} timed out ({_reason(exc) or type(exc).__name__})"
    elif isinstance(exc, httpx2.TransportError) or "Consistency check failed" in str(exc):
        msg = (f"download of {uri} was interrupted ({_reason(exc) or type(exc).__name__}); "
               "nothing was kept, run the command again to retry")
    elif isinstance(exc, ValueError):
        msg = f"cannot fetch {uri}: invalid repo id or file name ({_reason(exc)})"
    else:
        msg = f"cannot fetch {uri}: {_reason(exc) or type(exc).__name__}"
    return WeightsError(_one_line(msg))


# --------------------------------------------------------------------------------------------------------------
# Other source kinds, config.json, weights choice


def _fetch_bundled(source: Source) -> Path:
    if not source.filename:
        raise WeightsError("bundled weights source without a file name")
    path = presets.BUNDLED_DIR / source.filename
    if not path.is_file():
        raise WeightsError(f"bundled weights {source.filename} are missing from {presets.BUNDLED_DIR}; "
                           "reinstall restore-cli")
    _verify(path, source.sha256, f"bundled {source.filename}", "reinstall restore-cli")
    return path


def _read_config(path: Path, uri: str) -> tuple[str, dict[str, Any], str | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{uri}: config.json is not readable JSON ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{uri}: config.json must be a JSON object with arch and kwargs")
    arch, kwargs = data.get("arch"), data.get("kwargs", {})
    weights, sha256 = data.get("weights"), data.get("sha256")
    if not isinstance(arch, str) or not arch:
        raise WeightsError(f"{uri}: config.json does not name an architecture (expected \"arch\": \"<name>\")")
    if not isinstance(kwargs, dict):
        raise WeightsError(f"{uri}: config.json \"kwargs\" must be a JSON object")
    if weights is not None and (not isinstance(weights, str) or not weights.strip("/")):
        raise WeightsError(f"{uri}: config.json \"weights\" must be a file path inside the repo")
    if sha256 is not None and not isinstance(sha256, str):
        raise WeightsError(f"{uri}: config.json \"sha256\" must be a hex string")
    return arch, kwargs, weights.strip("/") if weights else None, sha256


def _list_repo_files(repo: str, commit: str, config_path: Path, *, offline: bool) -> list[str]:
    if is_offline(offline):
        # No listing offline: choose among the files of this commit that are already cached.
        snapshot = config_path.parent
        return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]
    uri = HfRef(repo, None, commit).uri()
    try:
        return HfApi().list_repo_files(repo, revision=commit)
    except _HUB_ERRORS as exc:
        raise _translate(exc, uri, repo, "", commit, "run the command once while online") from exc


def _pick_weights(files: Iterable[str], ref: HfRef) -> str:
    names = sorted(set(files))
    for suffix in WEIGHT_SUFFIXES:
        found = [f for f in names if f.lower().endswith(suffix)]
        if len(found) == 1:
            return found[0]
        if found:
            raise WeightsError(f"{ref.uri()} holds several {suffix} files ({', '.join(found[:5])}); name one with "
                               f"hf://{ref.repo}/FILE or set \"weights\" in its config.json")
    raise WeightsError(f"{ref.uri()} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")


# --------------------------------------------------------------------------------------------------------------
# Verification


def _expected(sha256: str | None, uri: str) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(value):
        raise WeightsError(f"expected sha256 for {uri} is not 64 hex digits: {sha256!r}")
    return value


def _verify(path: Path, sha256: str | None, uri: str, remedy: str) -> None:
    expected = _expected(sha256, uri)
    if expected is None:
        return
    try:
        got = file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read {uri} at {path}: {_reason(exc)}") from exc
    if got != expected:
        raise WeightsError(
            f"checksum mismatch for {uri} ({path}): expected sha256 {expected}, got {got}; refusing to load it "
            f"(the file was left in place; {remedy})"
        )


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _signature(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _load_stamps() -> dict[str, Any]:
    try:
        data = json.loads((restore_cache_dir() / _STAMPS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_stamps(stamps: dict[str, Any]) -> None:
    # Best effort: an unwritable cache dir only means hashing again next time.
    kept = {k: v for k, v in stamps.items() if os.path.exists(k)}
    kept = dict(list(kept.items())[-_MAX_STAMPS:])
    target = restore_cache_dir() / _STAMPS_FILE
    tmp = target.with_name(f"{_STAMPS_FILE}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(kept), encoding="utf-8")
        os.replace(tmp, target)  # atomic: concurrent runs never read half a file
    except OSError:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Removal


def _remove_cached(repo: str, pointer: Path) -> None:
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    snapshots, blobs = storage / "snapshots", storage / "blobs"
    blob: Path | None = None
    if pointer.is_symlink():
        # Follow one hop only: a blob that is itself a link into the shared store is unlinked, never its target.
        target = Path(os.path.normpath(pointer.parent / os.readlink(pointer)))
        if target.parent == blobs:
            blob = target
    pointer.unlink()

    # Prune now-empty folders up to the commit folder, and refs naming a commit that is gone.
    folder = pointer.parent
    while folder != snapshots and snapshots in folder.parents and not any(folder.iterdir()):
        folder.rmdir()
        if folder.parent == snapshots:
            _drop_refs(storage / "refs", folder.name)
        folder = folder.parent

    if blob is not None and not _blob_in_use(snapshots, blob):
        blob.unlink(missing_ok=True)


def _drop_refs(refs: Path, commit: str) -> None:
    if not refs.is_dir():
        return
    for ref in refs.rglob("*"):
        try:
            if ref.is_file() and ref.read_text().strip() == commit:
                ref.unlink()
        except OSError:
            pass


def _blob_in_use(snapshots: Path, blob: Path) -> bool:
    if not snapshots.is_dir():
        return False
    for link in snapshots.rglob("*"):
        if link.is_symlink() and Path(os.path.normpath(link.parent / os.readlink(link))) == blob:
            return True
    return False


# --------------------------------------------------------------------------------------------------------------
# Messages


def note(line: str) -> None:
    """One line on stderr that the user should see but that stops nothing (an unpinned preset)."""
    print("note: " + _one_line(line), file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """First meaningful line of an exception (library messages span several lines)."""
    for line in str(exc).splitlines():
        if line.strip():
            return _one_line(line)[:300]
    return ""


def _one_line(text: str) -> str:
    return " ".join(text.split())
