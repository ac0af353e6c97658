"""push_to_hub against a loopback Hub (tests/hub_server.py): the real ``huggingface_hub`` client talks HTTP to it.

Round trip (push, then ``SentenceTransformer(repo_id)`` from the server gives identical embeddings), what is and is
not uploaded, the Parquet copy of the diversity log, and reliability: refused connection, transient and persistent
5xx, a connection dropped mid-upload, slow answers, bad tokens. The local output folder must stay byte-for-byte
intact and the token must never show up in requests (outside the Authorization header), errors, logs or files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import struct
import time
import traceback
import zlib
from pathlib import Path

import hub_server as loopback
import pytest

from hf_divcl.publish.hub import (
    HubAuthError,
    HubUnreachableError,
    PushError,
    hub_token,
    push_to_hub,
    validate_repo_id,
)

hub_server = loopback.hub_server  # the loopback Hub fixtures, made visible to pytest in this module
hub_client = loopback.hub_client

REPO = "divcl-tester/tiny-divcl"
LOG_ROWS = [{"step": 1, "effective_rank": 3.5, "mean_cosine": 0.25, "bands": [0.5, 0.25]},
            {"step": 2, "effective_rank": 3.75, "mean_cosine": 0.125, "bands": [0.5, 0.125]},
            {"step": 3, "effective_rank": 4.0, "mean_cosine": 0.0625, "bands": [0.25, 0.125]}]
FAST = {"backoff": 0.01}  # retries without waiting in tests
# the client's own LFS PUT passes a file object as `data=`, which httpx2 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _png() -> bytes:
    """A valid 2x2 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes([40, 200]) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def output_dir(tiny_model_dir: str, tmp_path: Path) -> Path:
    """A training output folder: the tiny model plus card, plot, log, pickled args and a checkpoint."""
    out = tmp_path / "run"
    shutil.copytree(tiny_model_dir, out)
    (out / "README.md").write_text("---\nlibrary_name: sentence-transformers\ntags:\n- hf_divcl\n---\n\n# Tiny\n")
    (out / "diversity_trajectory.png").write_bytes(_png())
    lines = [json.dumps(r) for r in LOG_ROWS] + ['{"step": 4, "effective_ra']  # torn last line (crash)
    (out / "diversity_log.jsonl").write_text("\n".join(lines))
    (out / "divcl_window.json").write_text(json.dumps({"low": 2.0, "high": 6.0}))
    (out / "training_args.bin").write_bytes(b"\x80\x04\x95pickled TrainingArguments\x00.")
    (out / "optimizer.pt").write_bytes(b"\x80\x04optimizer\x00")
    ckpt = out / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 16)
    (ckpt / "rng_state.pth").write_bytes(b"\x80\x04rng")
    return out


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """``{relative path: (sha256, mtime_ns)}`` of every file and directory under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[path.relative_to(root).as_posix()] = (digest, st.st_mtime_ns)
    return out


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def full_text(err: BaseException) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__)) + repr(err)


def assert_no_token(text: str, *tokens: str) -> None:
    for tok in tokens:
        assert tok not in text


# ---------------------------------------------------------------------- no network needed
@pytest.mark.parametrize(("repo_id", "needle"), [
    ("bad id!", "' '"),
    ("a/b/c", "exactly one '/'"),
    ("../x", "must start and end"),
    ("ns/" + "x" * 100, "at most 96"),
    ("noslash", "exactly one '/'"),
    ("ns/na$me", "'$'"),
    ("ns/a--b", "'--'"),
    ("/x", "namespace is empty"),
])
def test_invalid_repo_ids_are_rejected(repo_id: str, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid repo id") as info:
        validate_repo_id(repo_id)
    assert needle in str(info.value)
    with pytest.raises(ValueError, match="Invalid repo id"):  # before touching the folder or the network
        push_to_hub(tmp_path / "missing", repo_id, token="hf_x", endpoint=closed_port_url())


@pytest.mark.parametrize("repo_id", ["user/model", "Org-1/my_model.v2", "a/b", "n/" + "x" * 94])
def test_valid_repo_ids(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


def test_hub_token_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import constants

    stored = tmp_path / "token"
    stored.write_text("hf_storedTOKENabcdefgh\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    assert hub_token() == "hf_storedTOKENabcdefgh"
    monkeypatch.setenv("HF_TOKEN", "hf_envTOKENabcdefgh")
    assert hub_token() == "hf_envTOKENabcdefgh"
    assert hub_token("hf_argTOKENabcdefgh") == "hf_argTOKENabcdefgh"
    monkeypatch.delenv("HF_TOKEN")
    stored.unlink()
    assert hub_token() is None
    captured = capsys.readouterr()
    assert "TOKEN" not in captured.out + captured.err


def test_missing_output_dir_and_missing_token(hub_client, tmp_path: Path, output_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        push_to_hub(tmp_path / "nope", REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    with pytest.raises(HubAuthError, match="No Hugging Face token found"):
        push_to_hub(output_dir, REPO, endpoint=hub_client.endpoint)  # no argument, no HF_TOKEN, no stored token
    assert hub_client.server.requests == []


# ---------------------------------------------------------------------- round trip
def test_push_then_load_gives_identical_embeddings(hub_client, output_dir: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import pyarrow.parquet as pq
    import torch
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError
    from sentence_transformers import SentenceTransformer

    server, token = hub_client.server, hub_client.token
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    before = tree_digest(output_dir)

    url = push_to_hub(output_dir, REPO, token=token, private=True, endpoint=hub_client.endpoint,
                      commit_message="Push tiny model")

    assert tree_digest(output_dir) == before  # nothing written, nothing touched
    head = server.head(REPO)
    assert url == f"{hub_client.endpoint}/{REPO}/commit/{head}"
    assert server.commits(REPO)[0]["title"] == "Push tiny model"
    assert server.repo_meta(REPO)["private"] is True

    # what the server holds: everything but pickles and checkpoints, byte-identical, plus the Parquet log
    files = server.repo_files(REPO)
    local = {p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*") if p.is_file()}
    excluded = {"training_args.bin", "optimizer.pt", "checkpoint-2/model.safetensors", "checkpoint-2/rng_state.pth"}
    assert set(files) == (local - excluded) | {".gitattributes", "diversity_log.parquet"}
    for rel in local - excluded:
        assert files[rel] == (output_dir / rel).read_bytes(), rel
    entries = server.repo_entries(REPO)
    for rel in ("model.safetensors", "diversity_trajectory.png", "diversity_log.parquet"):
        assert entries[rel]["lfs"] is not None, f"{rel} should go through LFS"
    assert entries["config.json"]["lfs"] is None
    assert server.requests_matching(r"^/_lfs/", method="PUT"), "LFS upload path not exercised"

    rows = pq.read_table(io.BytesIO(files["diversity_log.parquet"])).to_pylist()
    assert rows == LOG_ROWS

    # the token went only in Authorization headers: not in paths, bodies, other headers, files, logs
    api_requests = [r for r in server.requests if r.method != "PUT"]  # PUTs go to the LFS upload URLs, tokenless
    assert api_requests and all(r.authorized is True for r in api_requests)
    assert_no_token(server.transcript(), token)
    assert not any(token.encode() in data for data in files.values())
    assert_no_token(caplog.text, token)

    # private: anonymous download is refused; with the token SentenceTransformer loads it from the server
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", cache_dir=str(tmp_path / "anon"))
    remote = SentenceTransformer(REPO, device="cpu", token=token, cache_folder=str(tmp_path / "st-cache"))
    local_model = SentenceTransformer(str(output_dir), device="cpu")
    texts = ["a diverse batch", "contrastive fine-tuning", "x"]
    torch.testing.assert_close(remote.encode(texts, convert_to_tensor=True),
                               local_model.encode(texts, convert_to_tensor=True), rtol=0, atol=0)
    assert server.requests_matching(rf"^/{REPO}/resolve/", method="GET")
    assert_no_token(server.transcript(), token)
    assert server.handler_errors == []


def test_push_to_branch_leaves_main_alone(hub_client, output_dir: Path) -> None:
    server = hub_client.server
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, revision="dev")
    assert set(server.repo_files(REPO, "main")) == {".gitattributes"}
    assert "model.safetensors" in server.repo_files(REPO, "dev")


def test_server_speaks_what_snapshot_download_and_hfapi_use(hub_client, output_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    server, token = hub_client.server, hub_client.token
    push_to_hub(output_dir, REPO, token=token, endpoint=hub_client.endpoint)
    files = server.repo_files(REPO)
    snap = Path(snapshot_download(REPO, cache_dir=str(tmp_path / "snap")))
    assert {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()} == files

    api = HfApi(endpoint=hub_client.endpoint, token=token)
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == server.head(REPO) and {s.rfilename for s in info.siblings} == set(files)
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["model.safetensors"].size == len(files["model.safetensors"]) and lfs["config.json"] is None
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert set(tree) == set(files) | {"1_Pooling"}
    assert [e.path for e in api.list_repo_tree(REPO, "1_Pooling")] == ["1_Pooling/config.json"]
    infos = api.get_paths_info(REPO, ["config.json", "1_Pooling", "missing.txt"])
    assert [type(e).__name__ for e in infos] == ["RepoFile", "RepoFolder"]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", cache_dir=str(tmp_path / "c"))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="nope", cache_dir=str(tmp_path / "c"))
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("divcl-tester/absent")
    assert api.whoami()["name"] == server.user
    assert server.handler_errors == []


# ---------------------------------------------------------------------- faults
def test_refused_connection_is_clear_then_push_succeeds(hub_client, output_dir: Path) -> None:
    before = tree_digest(output_dir)
    dead = closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=dead, retries=1, **FAST)
    assert time.monotonic() - t0 < 10
    msg = str(info.value)
    assert dead in msg and "unreachable" in msg and "intact" in msg
    assert info.value.attempts == 2
    assert_no_token(full_text(info.value), hub_client.token)
    assert tree_digest(output_dir) == before

    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    assert "model.safetensors" in hub_client.server.repo_files(REPO)
    assert tree_digest(output_dir) == before


def test_transient_500_on_commit_is_retried(hub_client, output_dir: Path, caplog) -> None:
    server = hub_client.server
    server.fail(r"/commit/main$", times=2, status=500)
    caplog.set_level(logging.WARNING, logger="hf_divcl.publish.hub")
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, retries=3, **FAST)
    commits = server.requests_matching(r"/commit/main$", method="POST")
    assert [r.status for r in commits] == [500, 500, 200]
    assert len(server.commits(REPO)) == 2  # initial commit + ours, no duplicate
    assert "retrying" in caplog.text
    assert_no_token(caplog.text, hub_client.token)


def test_persistent_500_gives_clear_error(hub_client, output_dir: Path) -> None:
    server = hub_client.server
    server.fail(r"/commit/main$", times=None, status=503)
    before = tree_digest(output_dir)
    with pytest.raises(PushError) as info:
        push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, retries=2, **FAST)
    err = info.value
    assert not isinstance(err, (HubAuthError, HubUnreachableError))
    assert err.status_code == 503 and err.attempts == 3
    assert "still failing after 3 attempt(s)" in str(err) and "intact" in str(err)
    assert len(server.requests_matching(r"/commit/main$", method="POST")) == 3
    assert len(server.commits(REPO)) == 1  # only the initial commit
    assert_no_token(full_text(err), hub_client.token)
    assert tree_digest(output_dir) == before

    server.clear_faults()  # the Hub recovers: the same push now goes through
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    assert "model.safetensors" in server.repo_files(REPO)
    # every attempt re-ran create_repo(exist_ok=True): the existing repo answered 409 with its url
    creates = server.requests_matching(r"^/api/repos/create$", method="POST")
    assert [r.status for r in creates] == [200, 409, 409, 409]


def test_429_retry_after_is_honoured(hub_client, output_dir: Path) -> None:
    server = hub_client.server
    server.fail(r"/commit/main$", times=1, status=429, headers={"Retry-After": "1"})
    t0 = time.monotonic()
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, retries=1, **FAST)
    assert [r.status for r in server.requests_matching(r"/commit/main$")] == [429, 200]
    assert 1.0 <= time.monotonic() - t0 < 5  # waited Retry-After, not the 0.01 s back-off


@pytest.mark.parametrize(("pattern", "method"), [(r"^/_lfs/[^/]+/[^/]+/[0-9a-f]{64}$", "PUT"),
                                                  (r"/commit/main$", "POST")],
                         ids=["lfs-upload", "commit"])
def test_connection_dropped_mid_upload_is_retried(hub_client, output_dir: Path, pattern: str, method: str) -> None:
    server = hub_client.server
    server.drop(pattern, method=method, times=1, fraction=0.5)
    before = tree_digest(output_dir)
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, retries=2, **FAST)
    hits = server.requests_matching(pattern, method=method)
    assert hits[0].fault == "drop" and hits[0].status is None
    assert any(r.status == 200 for r in hits[1:])
    files = server.repo_files(REPO)
    assert files["model.safetensors"] == (output_dir / "model.safetensors").read_bytes()
    assert tree_digest(output_dir) == before


def test_slow_server_still_succeeds_and_download_timeout_is_retried(hub_client, output_dir: Path,
                                                                    tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    server = hub_client.server
    server.delay(r"/(preupload|commit)/main$", 0.2)
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    server.clear_faults()
    # the first metadata request outlives etag_timeout; the client retries it (with a longer timeout) and succeeds
    server.delay(r"/resolve/main/config\.json$", 5.0, method="HEAD", times=1)
    t0 = time.monotonic()
    path = hf_hub_download(REPO, "config.json", cache_dir=str(tmp_path / "c"), etag_timeout=0.3)
    assert time.monotonic() - t0 < 4
    assert Path(path).read_bytes() == (output_dir / "config.json").read_bytes()
    assert len(server.requests_matching(r"/resolve/main/config\.json$", method="HEAD")) == 2


@pytest.fixture
def own_client_factory(hub_client):
    """A caller's own huggingface_hub client factory for one test (the library's client plus a marker header), as
    one sets for a proxy or certificates; the library's factory is put back afterwards."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    library = _http._GLOBAL_CLIENT_FACTORY  # no public getter: read only to restore the library's own afterwards

    def factory():
        client = library()
        client.headers["X-Divcl-Own-Client"] = "kept"
        return client

    set_client_factory(factory)
    try:
        yield factory
    finally:
        set_client_factory(library)


def test_a_stalled_request_times_out_and_the_callers_client_factory_is_kept(hub_client, own_client_factory,
                                                                           output_dir: Path) -> None:
    from huggingface_hub import get_session

    server = hub_client.server
    server.delay(r"/preupload/main$", 30.0, times=1)  # answers long after the push's timeout
    url = push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint, timeout=0.5,
                      retries=1, **FAST)
    assert url and server.repo_files(REPO)["model.safetensors"] == (output_dir / "model.safetensors").read_bytes()
    # the first pre-upload request was cut off by the timeout and the push retried it
    assert len(server.requests_matching(r"/preupload/main$")) == 2
    # every request went through the caller's client, and afterwards that client has no timeout again
    assert server.requests and all({k.lower(): v for k, v in r.headers.items()}.get("x-divcl-own-client") == "kept"
                                   for r in server.requests)
    session = get_session()
    assert session.headers.get("X-Divcl-Own-Client") == "kept" and session.timeout.read is None


def test_wrong_token_gives_clear_401(hub_client, output_dir: Path) -> None:
    wrong = "hf_wrongTOKEN" + "z" * 20
    before = tree_digest(output_dir)
    with pytest.raises(HubAuthError) as info:
        push_to_hub(output_dir, REPO, token=wrong, endpoint=hub_client.endpoint, retries=3, **FAST)
    err = info.value
    assert err.status_code == 401 and err.attempts == 1  # not retried
    assert "rejected the token" in str(err) and "intact" in str(err)
    assert_no_token(full_text(err), wrong, hub_client.token)
    server = hub_client.server
    assert server.requests and all(r.authorized is False for r in server.requests)
    assert_no_token(server.transcript(), wrong)
    assert not server.repo_exists(REPO)
    assert tree_digest(output_dir) == before


def test_file_containing_the_token_is_never_uploaded(hub_client, output_dir: Path) -> None:
    (output_dir / "trainer_state.json").write_text(json.dumps({"hub_token": hub_client.token}))
    before = tree_digest(output_dir)
    with pytest.raises(PushError, match=r"trainer_state\.json .* contains your Hub token") as info:
        push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    assert_no_token(full_text(info.value), hub_client.token)
    assert hub_client.server.requests == []
    assert tree_digest(output_dir) == before


def test_token_from_environment_is_used_and_never_leaked(hub_client, output_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", hub_client.token)
    push_to_hub(output_dir, REPO, endpoint=hub_client.endpoint)
    server = hub_client.server
    api_requests = [r for r in server.requests if r.method != "PUT"]  # PUTs go to the LFS upload URLs, tokenless
    assert api_requests, "the push made no API request"
    assert all(r.authorized is True for r in api_requests)  # each carried the token from HF_TOKEN
    assert server.repo_exists(REPO) and server.commits(REPO)
    assert_no_token(server.transcript() + caplog.text, hub_client.token)


def test_client_is_offline_again_outside_hub_tests() -> None:
    """The hub_client fixture's changes are undone: other tests keep the conftest's offline client."""
    from huggingface_hub import constants

    expected = constants._is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    assert constants.HF_HUB_OFFLINE == expected
    assert "127.0.0.1" not in constants.ENDPOINT
