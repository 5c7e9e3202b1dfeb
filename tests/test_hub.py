"""restore_cli.hub against a real HTTP server that speaks enough of the Hub protocol (tests/hf_server.py).

huggingface_hub reads HF_ENDPOINT / HF_HOME when it is imported, so in-process tests point its `constants` at the
test server and a temp cache; one subprocess test sets the real environment variables instead.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants, file_download
from huggingface_hub.utils import _http

from restore_cli import hub, presets
from restore_cli.errors import UsageError, WeightsError
from restore_cli.presets import Source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_server import FakeHub, closed_port, sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
EMPTY_AGENT_REGISTRY = '{"standardEnvVars": [], "harnesses": {}}'


def _point_library_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """What HF_ENDPOINT / HF_HOME would have set had they been in the environment at import time."""
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        # The library fetches {ENDPOINT}/api/agent-harnesses once a day; a fresh local copy avoids that request.
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    home = tmp_path / "hf"
    home.mkdir()
    (home / ".agent_harnesses.json").write_text(EMPTY_AGENT_REGISTRY)
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_OIDC_RESOURCE",
        "TQDM_POSITION",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path / "restore"))
    with FakeHub() as srv:
        _point_library_at(monkeypatch, srv.url, home)
        yield srv
    huggingface_hub.close_session()  # drop pooled keep-alive connections to the stopped server


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library sleeps 1 s between resume attempts and backs off on retries; tests need not wait."""
    fake = SimpleNamespace(sleep=lambda _s: None, time=time.time, monotonic=time.monotonic)
    monkeypatch.setattr(file_download, "time", fake)
    monkeypatch.setattr(_http, "time", fake)


def hub_cache() -> Path:
    return Path(constants.HF_HUB_CACHE)


def assert_one_line(err: BaseException, *names: str) -> str:
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


def weights(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + i // 251) % 256 for i in range(n))


# ------------------------------------------------------------------------------------------------------------------
# Download, progress, cache hits


def test_first_download_with_progress_then_cache_hit_makes_no_request(
    server: FakeHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = weights(200_000)
    server.add_commit("acme/deblur", {"net.safetensors": data}, refs=("main", "v1.0"))
    src = Source("hf", repo="acme/deblur", filename="net.safetensors", revision="v1.0", sha256=sha256(data))
    assert not hub.is_cached(src) and hub.cached_path(src) is None

    monkeypatch.setenv("TQDM_POSITION", "-1")  # force the library's bars on although stderr is not a TTY
    path = hub.fetch(src, progress=True)
    assert path.read_bytes() == data
    assert "100%" in capsys.readouterr().err
    # Tag -> commit redirect, then the LFS redirect to the CDN path, then one GET of the content.
    assert server.count("GET", "/cdn/") == 1
    assert server.count("HEAD", "/resolve/v1.0/") >= 1

    server.clear()
    assert hub.fetch(src, progress=True) == path
    assert hub.is_cached(src) and hub.cached_path(src) == path
    assert server.requests == []  # a pinned preset in the cache costs no request, even for a tag
    assert capsys.readouterr().err == ""


def test_progress_off_prints_no_bar(
    server: FakeHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = weights(50_000)
    server.add_commit("acme/deblur", {"net.safetensors": data})
    monkeypatch.setenv("TQDM_POSITION", "-1")
    path = hub.fetch(Source("hf", repo="acme/deblur", filename="net.safetensors", revision="main"), progress=False)
    assert path.read_bytes() == data
    assert "100%" not in capsys.readouterr().err


def test_token_from_environment_is_sent(server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add_commit("acme/private", {"net.pth": b"x" * 100})
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_tests")
    hub.fetch(Source("hf", repo="acme/private", filename="net.pth", revision="main"), progress=False)
    auth = {r.headers.get("authorization") for r in server.requests if "/resolve/" in r.path}
    assert auth == {"Bearer hf_secret_for_tests"}


def test_revision_pinning_two_revisions_with_different_content(server: FakeHub) -> None:
    old, new = weights(30_000, seed=1), weights(30_000, seed=2)
    server.add_commit("acme/up", {"x4.safetensors": old}, refs=("main", "v1"))
    sha_new = server.add_commit("acme/up", {"x4.safetensors": new}, refs=("main", "v2"))

    p_old = hub.fetch(Source("hf", repo="acme/up", filename="x4.safetensors", revision="v1", sha256=sha256(old)))
    p_new = hub.fetch(Source("hf", repo="acme/up", filename="x4.safetensors", revision=sha_new, sha256=sha256(new)))
    assert p_old.read_bytes() == old and p_new.read_bytes() == new
    assert p_new.parent.name == sha_new and p_old != p_new

    server.clear()  # both stay cached side by side and are served from the cache
    assert hub.fetch(Source("hf", repo="acme/up", filename="x4.safetensors", revision="v1")).read_bytes() == old
    assert hub.fetch(Source("hf", repo="acme/up", filename="x4.safetensors", revision=sha_new)) == p_new
    assert server.requests == []


# ------------------------------------------------------------------------------------------------------------------
# Offline


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_uses_cache_and_explains_what_to_do_when_missing(
    server: FakeHub, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    data = weights(10_000)
    server.add_commit("acme/dn", {"a.safetensors": data, "b.safetensors": data[::-1]})
    a = Source("hf", repo="acme/dn", filename="a.safetensors", revision="main", sha256=sha256(data))
    b = Source("hf", repo="acme/dn", filename="b.safetensors", revision="main")
    path = hub.fetch(a)
    server.clear()

    flag = how == "flag"
    if not flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: honoured anyway
    assert hub.fetch(a, offline=flag) == path
    with pytest.raises(WeightsError) as err:
        hub.fetch(b, offline=flag, name="demo-dn")
    assert_one_line(err.value, "hf://acme/dn/b.safetensors@main", "offline", "restore models download demo-dn")
    assert server.requests == []


def test_environment_variables_in_a_fresh_process(server: FakeHub, tmp_path: Path) -> None:
    """HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE as a user sets them, read by the library at import."""
    data = weights(20_000)
    server.add_commit("acme/env", {"w.safetensors": data}, refs=("main", "v3"))
    home = tmp_path / "fresh-home"
    home.mkdir()
    (home / ".agent_harnesses.json").write_text(EMPTY_AGENT_REGISTRY)
    script = (
        "import sys\n"
        "from restore_cli import hub\n"
        "from restore_cli.errors import RestoreError\n"
        "from restore_cli.presets import Source\n"
        "for name in sys.argv[2:]:\n"
        "    src = Source('hf', repo='acme/env', filename=name, revision='v3', sha256=sys.argv[1])\n"
        "    try:\n"
        "        print(hub.fetch(src, progress=False, name='env-demo'))\n"
        "    except RestoreError as e:\n"
        "        print(e, file=sys.stderr)\n"
        "        sys.exit(e.exit_code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=server.url, HF_HOME=str(home), RESTORE_CACHE_DIR=str(tmp_path / "r"), PYTHONPATH=str(REPO_ROOT)
    )

    def run(*filenames: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, sha256(data), *filenames],
            env={**env, **extra},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run("w.safetensors")
    assert first.returncode == 0, first.stderr
    path = Path(first.stdout.strip())
    assert path.is_relative_to(home / "hub") and path.read_bytes() == data
    server.clear()
    offline = run("w.safetensors", "other.safetensors", HF_HUB_OFFLINE="1")
    assert offline.returncode == 1 and offline.stdout.strip() == str(path)
    assert_one_line(RuntimeError(offline.stderr.strip()), "other.safetensors", "restore models download env-demo")
    assert server.requests == []


# ------------------------------------------------------------------------------------------------------------------
# Checksums


def test_checksum_mismatch_announced_by_the_hub_refuses_before_downloading(server: FakeHub) -> None:
    data = weights(40_000)
    server.add_commit("acme/sr", {"net.safetensors": data})
    wrong = "0" * 64
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("hf", repo="acme/sr", filename="net.safetensors", revision="main", sha256=wrong))
    assert_one_line(err.value, "net.safetensors", wrong, sha256(data))
    assert server.count("GET") == 0


def test_checksum_mismatch_after_download_refuses_and_keeps_the_file(server: FakeHub) -> None:
    data = weights(40_000)
    server.add_commit("acme/sr", {"net.pth": data}, lfs=())  # plain git file: its ETag is no sha256
    wrong = "ab" * 32
    src = Source("hf", repo="acme/sr", filename="net.pth", revision="main", sha256=wrong)
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, name="sr")
    assert_one_line(err.value, "net.pth", wrong, sha256(data), "refusing")
    kept = hub.cached_path(src)
    assert kept is not None and kept.read_bytes() == data  # nothing deleted

    server.clear()  # every later use refuses again, from the cache
    with pytest.raises(WeightsError, match="checksum mismatch"):
        hub.fetch(src)
    assert server.requests == []


def test_tampered_cached_file_is_refused_not_deleted(server: FakeHub) -> None:
    data = weights(64_000)
    server.add_commit("acme/sr", {"net.safetensors": data})
    src = Source("hf", repo="acme/sr", filename="net.safetensors", revision="main", sha256=sha256(data))
    path = hub.fetch(src)
    blob = path.resolve()
    blob.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # same size, one byte changed
    st = blob.stat()
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(WeightsError) as err:
        hub.fetch(src)
    assert_one_line(err.value, "net.safetensors", sha256(data), sha256(blob.read_bytes()))
    assert blob.exists() and path.exists()


def test_hash_is_remembered_until_the_file_changes(server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    data = weights(30_000)
    server.add_commit("acme/sr", {"net.safetensors": data})
    calls: list[Path] = []
    real_hash = hub._hash_file

    def counting_hash(path: Path) -> str:
        calls.append(path)
        return real_hash(path)

    monkeypatch.setattr(hub, "_hash_file", counting_hash)
    src = Source("hf", repo="acme/sr", filename="net.safetensors", revision="main", sha256=sha256(data))
    path = hub.fetch(src)
    hub.fetch(src)
    hub.fetch(src)
    assert len(calls) == 1
    st = path.resolve().stat()
    os.utime(path.resolve(), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    hub.fetch(src)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------------------------
# Failures: not found, unreachable, interrupted


@pytest.mark.parametrize(
    ("repo", "filename", "revision", "names"),
    [
        ("acme/nope", "net.pth", "main", ["acme/nope", "net.pth", "not found"]),
        ("acme/real", "missing.pth", "main", ["missing.pth", "not found", "acme/real"]),
        ("acme/real", "net.pth", "v404", ["net.pth", "v404", "not found"]),
    ],
    ids=["repo", "file", "revision"],
)
def test_not_found(server: FakeHub, repo: str, filename: str, revision: str, names: list[str]) -> None:
    server.add_commit("acme/real", {"net.pth": b"w" * 10})
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("hf", repo=repo, filename=filename, revision=revision))
    assert_one_line(err.value, *names)
    assert server.count("GET") == 0


def test_connection_refused_fails_fast(server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    _point_library_at(monkeypatch, dead, Path(constants.HF_HOME))
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("hf", repo="acme/x", filename="net.safetensors", revision="v1"))
    assert time.monotonic() - start < 5  # no 25 s retry-with-backoff before giving up
    assert_one_line(err.value, "net.safetensors", "cannot connect", dead)


def _leftovers() -> list[Path]:
    return [p for p in hub_cache().rglob("*") if p.is_file() and (".incomplete" in p.name or p.parent.name == "blobs")]


def test_interrupted_transfer_resumes(server: FakeHub, no_sleep: None) -> None:
    # The library resumes from what it has written, and writes in 10 MiB chunks: a file past one chunk is needed.
    data = random.Random(5).randbytes(12 * MIB)
    server.add_commit("acme/big", {"net.safetensors": data})
    server.cut_plan = [11 * MIB]  # the first GET stops after 11 MiB
    src = Source("hf", repo="acme/big", filename="net.safetensors", revision="main", sha256=sha256(data))
    assert hub.fetch(src).read_bytes() == data
    ranges = [r.headers.get("range") for r in server.requests if r.method == "GET"]
    assert ranges == [None, f"bytes={10 * MIB}-"]


def test_interrupted_transfer_fails_cleanly_and_leaves_nothing(server: FakeHub, no_sleep: None) -> None:
    data = weights(300_000)
    server.add_commit("acme/big", {"net.safetensors": data})
    server.cut_plan = [120_000] + [0] * 20  # then every resume attempt dies at once
    src = Source("hf", repo="acme/big", filename="net.safetensors", revision="main", sha256=sha256(data))
    with pytest.raises(WeightsError) as err:
        hub.fetch(src)
    assert_one_line(err.value, "net.safetensors", "interrupted")
    assert 2 <= server.count("GET") <= 10  # the library gave up after a bounded number of resumes
    assert _leftovers() == [] and hub.cached_path(src) is None

    server.cut_plan = []
    assert hub.fetch(src).read_bytes() == data  # and the next run downloads it whole


# ------------------------------------------------------------------------------------------------------------------
# hf:// URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://acme/m", hub.HfRef("acme/m")),
        ("hf://acme/m@v2", hub.HfRef("acme/m", None, "v2")),
        ("hf://acme/m/net.safetensors", hub.HfRef("acme/m", "net.safetensors")),
        ("hf://acme/m/sub/dir/net.pth@abc123", hub.HfRef("acme/m", "sub/dir/net.pth", "abc123")),
        ("hf://acme/m/net.pth@refs/pr/1", hub.HfRef("acme/m", "net.pth", "refs/pr/1")),
        ("hf://acme/m@refs/pr/1/sub/net.pth", hub.HfRef("acme/m", "sub/net.pth", "refs/pr/1")),
        ("hf://acme/m@main/net@1.pth", hub.HfRef("acme/m", "net@1.pth", "main")),
        ("hf://models/acme/m/net.pth", hub.HfRef("acme/m", "net.pth")),
    ],
)
def test_parse_hf_uri(uri: str, expected: hub.HfRef) -> None:
    assert hub.parse_hf_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "acme/m",
        "hf://",
        "hf://acme",
        "hf://datasets/acme/m",
        "hf://acme/m/../x.pth",
        "hf://acme/m/x.pth@",
        "hf://ac--me/m",
    ],
)
def test_parse_hf_uri_rejects(uri: str) -> None:
    with pytest.raises(UsageError) as err:
        hub.parse_hf_uri(uri)
    assert_one_line(err.value)


def _config(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_repo_form_reads_config_and_prefers_safetensors(server: FakeHub) -> None:
    st, pth = weights(20_000, seed=3), weights(20_000, seed=4)
    commit = server.add_commit(
        "acme/model",
        {
            "config.json": _config(arch="nafnet", kwargs={"width": 16, "blocks": [1, 2]}),
            "model.pth": pth,
            "model.safetensors": st,
            "README.md": b"# hi",
        },
    )
    model = hub.fetch_hf_uri("hf://acme/model", progress=False)
    assert model == hub.HubModel(
        model.path, "acme/model", "model.safetensors", commit, "nafnet", {"width": 16, "blocks": [1, 2]}
    )
    assert model.path.read_bytes() == st
    assert server.count(contains="/api/models/acme/model/tree/") == 1
    assert server.count(contains="model.pth") == 0

    server.clear()  # offline: config from the cache, weights chosen among cached files of that commit
    assert hub.fetch_hf_uri("hf://acme/model", offline=True) == model
    assert server.requests == []


def test_repo_form_config_names_weights_and_checksum(server: FakeHub) -> None:
    data = weights(10_000)
    commit = server.add_commit(
        "acme/model",
        {
            "config.json": _config(arch="restormer", weights="ckpt/net.pth", sha256=sha256(data)),
            "ckpt/net.pth": data,
            "other.safetensors": b"not this one",
        },
        refs=("main", "v1"),
    )
    model = hub.fetch_hf_uri("hf://acme/model@v1")
    assert (model.filename, model.revision, model.kwargs, model.path.read_bytes()) == ("ckpt/net.pth", commit, {}, data)
    assert server.count(contains="/api/") == 0  # no listing needed

    server.add_commit("acme/bad", {"config.json": _config(arch="x", weights="w.pth", sha256="1" * 64), "w.pth": data})
    with pytest.raises(WeightsError) as err:
        hub.fetch_hf_uri("hf://acme/bad")
    assert_one_line(err.value, "w.pth", "1" * 64)


def test_repo_form_follows_a_moving_branch_when_online(server: FakeHub) -> None:
    one, two = weights(5_000, seed=5), weights(5_000, seed=6)
    server.add_commit("acme/live", {"config.json": _config(arch="a"), "w.safetensors": one})
    assert hub.fetch_hf_uri("hf://acme/live").path.read_bytes() == one
    c2 = server.add_commit("acme/live", {"config.json": _config(arch="b"), "w.safetensors": two})
    model = hub.fetch_hf_uri("hf://acme/live")
    assert (model.arch, model.revision, model.path.read_bytes()) == ("b", c2, two)


@pytest.mark.parametrize(
    ("files", "names"),
    [
        ({"w.safetensors": b"x"}, ["config.json", "hf://acme/m/FILE"]),
        ({"config.json": _config(kwargs={}), "w.pth": b"x"}, ["arch"]),
        ({"config.json": b"{not json", "w.pth": b"x"}, ["config.json", "JSON"]),
        (
            {"config.json": _config(arch="a"), "a.safetensors": b"1", "b.safetensors": b"2"},
            ["a.safetensors", "b.safetensors", "several"],
        ),
        ({"config.json": _config(arch="a"), "notes.txt": b"1"}, ["no weights file"]),
    ],
    ids=["no-config", "no-arch", "bad-json", "ambiguous", "no-weights"],
)
def test_repo_form_errors(server: FakeHub, files: dict[str, bytes], names: list[str]) -> None:
    server.add_commit("acme/m", files)
    with pytest.raises(WeightsError) as err:
        hub.fetch_hf_uri("hf://acme/m")
    assert_one_line(err.value, "acme/m", *names)


def test_file_form_with_revision(server: FakeHub) -> None:
    old, new = weights(4_000, seed=7), weights(4_000, seed=8)
    c1 = server.add_commit("acme/f", {"sub/w.pth": old}, refs=("main", "v1"))
    server.add_commit("acme/f", {"sub/w.pth": new})
    model = hub.fetch_hf_uri("hf://acme/f/sub/w.pth@v1")
    assert (model.path.read_bytes(), model.revision, model.arch, model.kwargs) == (old, c1, None, None)
    assert hub.fetch_hf_uri("hf://acme/f/sub/w.pth").path.read_bytes() == new
    with pytest.raises(WeightsError) as err:
        hub.fetch_hf_uri("hf://acme/f/sub/nope.pth")
    assert_one_line(err.value, "sub/nope.pth", "not found")


# ------------------------------------------------------------------------------------------------------------------
# remove, bundled, url


def test_remove_deletes_only_that_file(server: FakeHub) -> None:
    a_data = weights(8_000, seed=9)
    server.add_commit(
        "acme/two", {"a.safetensors": a_data, "b.safetensors": weights(8_000, seed=10), "copy.safetensors": a_data}
    )
    a, b, copy = (
        Source("hf", repo="acme/two", filename=f, revision="main")
        for f in ("a.safetensors", "b.safetensors", "copy.safetensors")
    )
    pa, pb, pc = hub.fetch(a), hub.fetch(b), hub.fetch(copy)
    blob_a, blob_b = pa.resolve(), pb.resolve()
    assert blob_a == pc.resolve()  # same content, one blob

    assert hub.remove(b) is True
    assert not pb.exists() and not blob_b.exists()
    assert hub.remove(b) is False and not hub.is_cached(b)
    assert hub.remove(a) is True
    assert blob_a.exists() and pc.read_bytes() == a_data  # still used by copy.safetensors
    assert hub.remove(copy) is True
    assert not blob_a.exists() and _leftovers() == []
    assert hub.fetch(b).read_bytes() == weights(8_000, seed=10)  # and it can be downloaded again


def test_bundled_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_CACHE_DIR", str(tmp_path / "restore"))
    monkeypatch.setattr(presets, "BUNDLED_DIR", tmp_path)
    (tmp_path / "tiny.safetensors").write_bytes(b"tiny weights")
    good = Source("bundled", filename="tiny.safetensors", sha256=sha256(b"tiny weights"))
    assert hub.fetch(good) == tmp_path / "tiny.safetensors" and hub.is_cached(good)
    assert hub.remove(good) is False and (tmp_path / "tiny.safetensors").exists()
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("bundled", filename="tiny.safetensors", sha256="2" * 64))
    assert_one_line(err.value, "tiny.safetensors", "2" * 64)
    with pytest.raises(WeightsError) as err:
        hub.fetch(Source("bundled", filename="gone.safetensors"))
    assert_one_line(err.value, "gone.safetensors", "reinstall")


def test_login_only_url_source_explains_the_manual_download() -> None:
    # Downloadable URLs are tested in test_urls.py; a login-only host still gets "where to get the file".
    src = Source(
        "url",
        url="https://pan.baidu.com/s/1swinir?pwd=abcd",
        filename="swinir.pth",
        note="academic use only;\nsign the form first",
    )
    assert not hub.is_cached(src) and hub.cached_path(src) is None
    with pytest.raises(WeightsError) as err:
        hub.fetch(src, name="swinir")
    assert_one_line(
        err.value,
        "swinir",
        "https://pan.baidu.com/s/1swinir?pwd=abcd",
        "--model PATH",
        "academic use only; sign the form first",
    )
