"""restore_cli.urls through hub.fetch, against local servers that answer like GitHub and like Google Drive.

Nothing here reaches the internet: GitHub-style URLs point at 127.0.0.1, and RESTORE_GDRIVE_ENDPOINT points the
Drive protocol at a FakeDrive (tests/web_server.py) while presets keep their real drive.google.com links.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from restore_cli import hub, urls
from restore_cli.errors import WeightsError
from restore_cli.presets import Source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_server import FakeDrive, WebServer, closed_port, github_asset, sha256

RELEASE = "/acme/net/releases/download/v1.0/net.pth"


def weights(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(n))


def assert_one_line(err: BaseException, *needles: str) -> None:
    text = str(err)
    assert "\n" not in text and text.strip() == text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"


def leftovers(cache: Path) -> list[str]:
    """Files under the url cache other than finished weights (filelock's empty lock files aside)."""
    root = cache / "urls"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name.endswith((".part", ".json"))) if root.exists() else []


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                "https_proxy", "all_proxy", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def gh(cache: Path) -> Iterator[tuple[WebServer, WebServer]]:
    with WebServer() as github, WebServer() as objects:
        yield github, objects


@pytest.fixture
def drive(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDrive]:
    with FakeDrive() as d:
        monkeypatch.setenv(urls.GDRIVE_ENDPOINT_ENV, d.site.url)
        yield d


def lock_entries(cache: Path) -> dict[str, dict[str, object]]:
    path = cache / urls.LOCK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------------------------------------------
# GitHub-style redirects, cache hits, offline, progress


def test_github_release_redirect_then_cache_hit_makes_no_request(
    gh: tuple[WebServer, WebServer], cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    github, objects = gh
    data = weights(300_000)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    assert not hub.is_cached(src) and hub.cached_path(src) is None

    path = hub.fetch(src, progress=False, name="gh-net")
    assert path.read_bytes() == data and path.name == "net.pth"
    assert path.parent.parent == cache / "urls" / "127.0.0.1"
    assert github.count(RELEASE) == 1 and objects.count("/release-assets/") == 1  # 302, then the object
    assert leftovers(cache) == [] and capsys.readouterr().err == ""  # pinned: no "unpinned" line

    github.clear()
    objects.clear()
    assert hub.fetch(src, progress=False, name="gh-net") == path
    assert hub.is_cached(src) and hub.cached_path(src) == path
    assert github.requests == [] and objects.requests == []


def test_progress_bar_only_when_asked(
    gh: tuple[WebServer, WebServer], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    github, objects = gh
    data = weights(50_000)
    url = github_asset(github, objects, RELEASE, data)
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws bars on a terminal only; make it think stderr is one
    hub.fetch(Source("url", url=url, filename="a.pth", sha256=sha256(data)), progress=False, name="quiet-net")
    assert "quiet-net" not in capsys.readouterr().err
    hub.fetch(Source("url", url=url + "?x=1", filename="a.pth", sha256=sha256(data)), progress=True, name="loud-net")
    assert "loud-net" in capsys.readouterr().err


def test_offline_uses_only_the_cache(
    gh: tuple[WebServer, WebServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    github, objects = gh
    data = weights(20_000)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, name="gh-net")
    assert_one_line(err.value, "gh-net", "offline", "restore models download gh-net")
    assert github.requests == [] and objects.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = hub.fetch(src, progress=False, name="gh-net")
    github.clear()
    objects.clear()
    assert hub.fetch(src, offline=True, name="gh-net") == path
    assert github.requests == [] and objects.requests == []


# ----------------------------------------------------------------------------------------------------------------
# Resume


def test_dropped_connection_keeps_a_part_that_the_next_run_resumes(
    gh: tuple[WebServer, WebServer], cache: Path
) -> None:
    github, objects = gh
    data = weights(200_000, seed=1)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    objects.cut_plan = [70_000]
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="gh-net")
    assert_one_line(err.value, "gh-net", "interrupted", "resume")
    assert not hub.is_cached(src)
    part = next((cache / "urls").rglob("net.pth.part"))
    assert part.stat().st_size == 70_000

    path = hub.fetch(src, progress=False, name="gh-net")
    assert path.read_bytes() == data
    last = objects.last("/release-assets/")
    assert last.headers["range"] == "bytes=70000-" and last.headers["if-range"].startswith('"')
    assert leftovers(cache) == []


def test_server_that_ignores_range_restarts_cleanly(gh: tuple[WebServer, WebServer], cache: Path) -> None:
    github, objects = gh
    data = weights(120_000, seed=2)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    objects.honour_range = False
    objects.cut_plan = [50_000]
    with pytest.raises(WeightsError):
        hub.fetch(src, progress=False)
    assert hub.fetch(src, progress=False).read_bytes() == data  # the 200 answer replaced the part
    assert objects.last("/release-assets/").headers.get("range") == "bytes=50000-"
    assert leftovers(cache) == []


def test_file_changed_between_attempts_is_fetched_whole(gh: tuple[WebServer, WebServer], cache: Path) -> None:
    github, objects = gh
    old, new = weights(90_000, seed=3), weights(90_000, seed=4)
    url = github_asset(github, objects, RELEASE, old)
    src = Source("url", url=url, filename="net.pth")  # unpinned: what arrives first is recorded
    objects.cut_plan = [40_000]
    with pytest.raises(WeightsError):
        hub.fetch(src, progress=False)
    github_asset(github, objects, RELEASE, new)  # new ETag: If-Range makes the server send all of it
    assert hub.fetch(src, progress=False).read_bytes() == new
    assert lock_entries(cache)[url]["sha256"] == sha256(new)


# ----------------------------------------------------------------------------------------------------------------
# sha256: pinned, and trust on first use


def test_pinned_mismatch_refuses_names_both_hashes_and_keeps_nothing(
    gh: tuple[WebServer, WebServer], cache: Path
) -> None:
    github, objects = gh
    data = weights(30_000)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256="ab" * 32)
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="gh-net")
    assert_one_line(err.value, "gh-net", "ab" * 32, sha256(data), "nothing was kept")
    assert not hub.is_cached(src) and leftovers(cache) == []
    assert [p for p in (cache / "urls").rglob("*.pth")] == []
    assert lock_entries(cache) == {}  # a pinned preset never goes into the lock file


def test_trust_on_first_use(
    gh: tuple[WebServer, WebServer], cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    github, objects = gh
    first, changed = weights(40_000, seed=5), weights(40_000, seed=6)
    url = github_asset(github, objects, RELEASE, first)
    src = Source("url", url=url, filename="net.pth")

    path = hub.fetch(src, progress=False, name="tofu-net")
    entry = lock_entries(cache)[url]
    assert entry["sha256"] == sha256(first) and entry["size"] == len(first) and entry["preset"] == "tofu-net"
    assert len(str(entry["date"])) == 10 and urls.recorded(src) == entry
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "tofu-net is unpinned" in lines[0] and sha256(first)[:16] in lines[0]

    github.clear()
    assert hub.fetch(src, progress=False, name="tofu-net") == path  # cache hit: checked against the record
    assert github.requests == [] and "unpinned" in capsys.readouterr().err

    assert hub.remove(src) and not path.exists()
    github_asset(github, objects, RELEASE, changed)
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="tofu-net")
    assert_one_line(err.value, "tofu-net", sha256(first), sha256(changed), "nothing was kept", urls.LOCK_FILE)
    assert not hub.is_cached(src) and leftovers(cache) == []
    assert lock_entries(cache)[url] == entry  # the record stands

    github_asset(github, objects, RELEASE, first)
    assert hub.fetch(src, progress=False, name="tofu-net").read_bytes() == first


def test_cached_file_that_changed_on_disk_is_refused_and_left(
    gh: tuple[WebServer, WebServer], cache: Path
) -> None:
    github, objects = gh
    data = weights(10_000, seed=7)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth")
    path = hub.fetch(src, progress=False, name="tofu-net")
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="tofu-net")
    assert_one_line(err.value, sha256(data), sha256(b"tampered"), "restore models remove tofu-net")
    assert path.read_bytes() == b"tampered"


# ----------------------------------------------------------------------------------------------------------------
# Google Drive


def test_drive_small_file_is_named_by_the_server(drive: FakeDrive, cache: Path) -> None:
    data = weights(25_000, seed=8)
    file_id = drive.add_file("Baseline-GoPro-width32.pth", data)
    src = Source("url", url=drive.file_url(file_id))  # no filename in the preset
    path = hub.fetch(src, progress=False)
    assert path.read_bytes() == data and path.name == "Baseline-GoPro-width32.pth"
    assert path.parent == cache / "urls" / "drive.google.com" / file_id
    assert drive.site.count("/uc") == 1 and drive.content.count("/download") == 1
    assert hub.cached_path(src) == path
    # The ?id= form of a Drive link is the same file.
    assert hub.fetch(Source("url", url=f"https://drive.google.com/open?id={file_id}"), progress=False) == path


def test_drive_large_file_goes_through_the_confirmation_page_and_resumes(drive: FakeDrive, cache: Path) -> None:
    data = weights(250_000, seed=9)
    file_id = drive.add_file("NAFNet-GoPro-width64.pth", data, large=True)
    src = Source("url", url=drive.file_url(file_id), filename="NAFNet-GoPro-width64.pth", sha256=sha256(data))
    drive.content.cut_plan = [100_000]
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="nafnet-gopro-w64")
    assert_one_line(err.value, "interrupted", "resume")
    first = [r.query for r in drive.content.requests]
    assert len(first) == 2 and "confirm" not in first[0] and first[1]["confirm"] == "t" and first[1]["uuid"]

    drive.content.clear()
    assert hub.fetch(src, progress=False, name="nafnet-gopro-w64").read_bytes() == data
    page, rest = drive.content.requests
    assert "confirm" not in page.query and rest.query["confirm"] == "t"
    assert rest.headers["range"] == "bytes=100000-"
    assert leftovers(cache) == []


def test_drive_folder_downloads_only_the_named_file(drive: FakeDrive, cache: Path) -> None:
    gopro, realblur = weights(30_000, seed=10), weights(30_000, seed=11)
    g = drive.add_folder("train_on_GoPro", {"net_g_latest.pth": drive.add_file("net_g_latest.pth", gopro)})
    r = drive.add_folder("train_on_RealBlurJ", {"net_g_latest.pth": drive.add_file("net_g_latest.pth", realblur)})
    root = drive.add_folder("UFPNet", {"train_on_GoPro": g, "train_on_RealBlurJ": r,
                                       "README.txt": drive.add_file("README.txt", b"read me")})
    url = drive.folder_url(root)
    src = Source("url", url=url, filename="train_on_GoPro/net_g_latest.pth")
    path = hub.fetch(src, progress=False, name="ufpnet-gopro")
    assert path.read_bytes() == gopro
    assert path == cache / "urls" / "drive.google.com" / root / "train_on_GoPro" / "net_g_latest.pth"
    assert drive.site.count("/embeddedfolderview") == 2 and drive.content.count("/download") == 1

    other = Source("url", url=url, filename="train_on_RealBlurJ/net_g_latest.pth")
    assert hub.fetch(other, progress=False).read_bytes() == realblur
    assert hub.cached_path(src) == path  # both files cached side by side
    assert set(lock_entries(cache)) == {f"{url}#train_on_GoPro/net_g_latest.pth",
                                        f"{url}#train_on_RealBlurJ/net_g_latest.pth"}


def test_drive_folder_without_the_file_says_what_it_holds(drive: FakeDrive) -> None:
    root = drive.add_folder("SPAN", {"spanx4_ch52.pth": drive.add_file("spanx4_ch52.pth", b"x" * 100)})
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("url", url=drive.folder_url(root), filename="spanx4_ch48.pth"), progress=False,
                  name="span-x4-ch48")
    assert_one_line(err.value, "span-x4-ch48", "spanx4_ch48.pth", "spanx4_ch52.pth")
    assert drive.content.requests == []


def test_drive_refusals_are_one_line(drive: FakeDrive, cache: Path) -> None:
    file_id = drive.add_file("net.pth", weights(1_000))
    drive.quota_exceeded = True
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("url", url=drive.file_url(file_id)), progress=False, name="busy")
    assert_one_line(err.value, "busy", "Too many users have viewed or downloaded this file", "--model PATH")
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("url", url=drive.file_url("1" + "z" * 32)), progress=False, name="gone")
    assert_one_line(err.value, "gone", "HTTP 404")
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("url", url=drive.folder_url("1" + "y" * 32), filename="a.pth"), progress=False)
    assert_one_line(err.value, "HTTP 404")
    assert leftovers(cache) == []


# ----------------------------------------------------------------------------------------------------------------
# Errors a user can cause


def test_http_failures_are_one_line_and_leave_nothing(gh: tuple[WebServer, WebServer], cache: Path) -> None:
    github, objects = gh
    cases = [
        (github.url + "/acme/net/releases/download/v1.0/missing.pth", ("HTTP 404", "missing.pth")),
        (f"http://127.0.0.1:{closed_port()}/net.pth", ("cannot connect to 127.0.0.1",)),
        (github.page("/acme/net/blob/main/net.pth", "<!DOCTYPE html><html><body>a page</body></html>"),
         ("web page instead of the file", "--model PATH")),
        (objects.file("/sniffed.pth", b"  <!doctype html><html>login</html>", {"Content-Type": "binary/x"}),
         ("web page instead of the file",)),
        (github.page("/private.pth", "denied", status=403), ("HTTP 403", "not shared publicly")),
    ]
    for url, needles in cases:
        with pytest.raises(WeightsError) as err:
            hub.fetch(Source("url", url=url), progress=False, name="net")
        assert_one_line(err.value, "net", *needles)
    assert leftovers(cache) == [] and not list((cache / "urls").rglob("*.pth"))


def test_disk_full_keeps_a_resumable_part(
    gh: tuple[WebServer, WebServer], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github, objects = gh
    data = weights(1 << 20, seed=12)  # many network reads: the second write fails
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    real_write = urls._write
    calls = []

    def full_disk(f: object, chunk: bytes) -> None:
        calls.append(len(chunk))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(urls, "_write", full_disk)
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, progress=False, name="big")
    assert_one_line(err.value, "big", "No space left on device", "resume")
    assert next((cache / "urls").rglob("net.pth.part")).stat().st_size == calls[0]

    monkeypatch.setattr(urls, "_write", real_write)
    assert hub.fetch(src, progress=False, name="big").read_bytes() == data
    assert objects.last("/release-assets/").headers["range"] == f"bytes={calls[0]}-"


def test_login_only_hosts_say_where_to_get_the_file(cache: Path) -> None:
    src = Source("url", url="https://pan.baidu.com/s/1iyefA_-GZwCy1xJnNtENBw?pwd=w3gj",
                 note="extraction code w3gj;\nfile name not stated")
    assert urls.is_manual(src) and not hub.is_cached(src) and hub.remove(src) is False
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, name="sfhformer-gopro")
    assert_one_line(err.value, "sfhformer-gopro", "https://pan.baidu.com/s/1iyefA_-GZwCy1xJnNtENBw?pwd=w3gj",
                    "download it by hand", "--model PATH", "extraction code w3gj; file name not stated")
    assert not urls.is_manual(Source("url", url="https://github.com/a/b/releases/download/v1/x.pth"))


def test_remove_deletes_the_file_and_any_partial_download(gh: tuple[WebServer, WebServer], cache: Path) -> None:
    github, objects = gh
    data = weights(60_000, seed=13)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    objects.cut_plan = [10_000]
    with pytest.raises(WeightsError):
        hub.fetch(src, progress=False)
    assert leftovers(cache) != []
    assert hub.remove(src) is True and leftovers(cache) == []
    hub.fetch(src, progress=False)
    assert hub.remove(src) is True and hub.remove(src) is False
    assert not any((cache / "urls").iterdir())  # empty folders pruned


def test_stale_part_larger_than_the_file_restarts(gh: tuple[WebServer, WebServer], cache: Path) -> None:
    github, objects = gh
    data = weights(20_000, seed=14)
    src = Source("url", url=github_asset(github, objects, RELEASE, data), filename="net.pth", sha256=sha256(data))
    target = urls._target(src)
    assert target is not None
    target.part.parent.mkdir(parents=True)
    target.part.write_bytes(b"x" * 30_000)  # longer than the file: the server answers 416
    target.part.with_name("net.pth.part.json").write_text(json.dumps(
        {"key": target.key, "validator": None, "total": None, "name": None}))
    assert hub.fetch(src, progress=False).read_bytes() == data
    assert objects.count("/release-assets/") == 2 and leftovers(cache) == []


def test_drive_pages_older_confirm_link_and_login() -> None:
    target = urls._Target("https://drive.google.com/file/d/1abcdefghijk", "drive-file", Path("/x"), None,
                          "k", "1abcdefghijk")
    older = ('<html><body><a id="uc-download-link" href="/uc?export=download&amp;confirm=Ab12&amp;'
             'id=1abcdefghijk">Download anyway</a></body></html>')
    assert urls._drive_next(older, "https://drive.google.com/uc?id=1abcdefghijk", target, "net") == (
        "https://drive.google.com/uc?export=download&confirm=Ab12&id=1abcdefghijk")
    with pytest.raises(WeightsError) as err:
        urls._drive_next("<html><title>Sign in</title></html>", "https://accounts.google.com/ServiceLogin?x=1",
                         target, "net")
    assert_one_line(err.value, "net", "needs a Google login", "--model PATH")
