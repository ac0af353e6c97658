"""A loopback Hugging Face Hub for tests: a threaded stdlib HTTP server that stores model repos on disk and speaks
the subset of the Hub HTTP API that ``huggingface_hub`` uses to create repos, commit files (regular files inline,
large/binary files through the LFS batch protocol) and download them again (``hf_hub_download``,
``snapshot_download``, ``SentenceTransformer(repo_id)``).

It also injects faults for reliability tests (``fail``: answer with an error status, ``delay``: answer late,
``drop``: close the connection half-way through reading the request body), can require a bearer token, and records
every request (the ``Authorization`` value is never stored) so that tests can check what went over the wire.

Usage::

    def test_x(hub_client):          # server started, client switched online and pointed at it
        hub_client.server.fail(r"/commit/", times=2)
        ...

The ``hub_server`` / ``hub_client`` fixtures are defined here; import them into a test module to use them.
Only model repos are served (no datasets/spaces, no pull requests, no Xet: the client must run with
``HF_HUB_DISABLE_XET``).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

__all__ = ["HubServer", "RecordedRequest", "hub_client", "hub_server", "online_client"]

# Files the Hub stores through LFS (besides any file >= 10 MB and any binary file): the usual model-repo patterns.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.npy", "*.npz",
                "*.pkl", "*.pickle", "*.parquet", "*.arrow", "*.zip", "*.gz", "*.tar", "*.model", "*tfevents*")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
_OID = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubError(Exception):
    """An HTTP error answer: status, JSON body ``{"error": message}`` and optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}
        self.headers = headers or {}


def _repo_not_found(repo_id: str) -> HubError:
    return HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")


@dataclass
class RecordedRequest:
    """One request as received. ``headers`` has the ``Authorization`` value replaced by ``<redacted>``;
    ``authorized`` says whether it carried the server's token (``None`` if it carried no Authorization header)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    authorized: bool | None
    status: int | None = None
    fault: str | None = None

    def text(self) -> str:
        """Everything recorded, as one string (for leak checks)."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"


@dataclass
class _Fault:
    kind: str  # "fail" | "delay" | "drop"
    pattern: re.Pattern
    method: str | None
    remaining: int | None  # None: forever
    status: int = 500
    seconds: float = 0.0
    fraction: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining is None or self.remaining > 0) and (self.method in (None, method)) \
            and bool(self.pattern.search(path))


@dataclass
class _Repo:
    """On-disk layout: ``meta.json`` (visibility, refs), ``commits/<sha>.json`` (a full file table per commit),
    ``blobs/<git-sha1>`` (regular files) and ``lfs/<sha256>`` (LFS objects)."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def commit(self, sha: str) -> dict[str, Any]:
        return json.loads((self.path / "commits" / f"{sha}.json").read_text())

    def save_meta(self) -> None:
        tmp = self.path / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.path / "meta.json")


class HubServer:
    """A loopback Hub (see module docstring). Start with :meth:`start` or as a context manager.

    Args:
        root: directory for the repos (created).
        token: when set, writes and private-repo reads need ``Authorization: Bearer <token>``; a request with a
            wrong token gets 401 on every endpoint.
        require_auth_for_reads: also require the token on public-repo reads.
        user: the user name ``whoami-v2`` reports (repos may be created in this namespace or in ``orgs``; any
            namespace is accepted when ``orgs`` is ``None``).
    """

    def __init__(self, root: str | os.PathLike, *, token: str | None = None, require_auth_for_reads: bool = False,
                 user: str = "divcl-tester", orgs: tuple[str, ...] | None = None) -> None:
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.token = token
        self.require_auth_for_reads = require_auth_for_reads
        self.user = user
        self.orgs = orgs
        self._lock = threading.RLock()
        self._faults: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._secret = secrets.token_bytes(16)
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        httpd.daemon_threads = True
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed handlers and close the socket."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (use as ``HF_ENDPOINT``)."""
        if self._httpd is None:
            raise RuntimeError("The loopback Hub is not running: call start() first.")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ faults
    def fail(self, pattern: str, *, times: int | None = 1, status: int = 500, method: str | None = None,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` requests whose path (no query string) matches ``pattern`` (regex search) with
        ``status`` and extra ``headers`` such as ``Retry-After`` (``times=None``: every such request)."""
        self._add_fault(_Fault("fail", re.compile(pattern), method, times, status=status, headers=dict(headers or {})))

    def delay(self, pattern: str, seconds: float, *, times: int | None = None, method: str | None = None) -> None:
        """Wait ``seconds`` before answering matching requests (to trigger client timeouts)."""
        self._add_fault(_Fault("delay", re.compile(pattern), method, times, seconds=seconds))

    def drop(self, pattern: str, *, times: int | None = 1, method: str | None = None, fraction: float = 0.5) -> None:
        """Read ``fraction`` of the request body of matching requests, then close the connection without an
        answer (a connection lost mid-upload)."""
        self._add_fault(_Fault("drop", re.compile(pattern), method, times, fraction=fraction))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_faults(self, method: str, path: str) -> list[_Fault]:
        with self._lock:
            hit = [f for f in self._faults if f.matches(method, path)]
            for f in hit:
                f.hits += 1
                if f.remaining is not None:
                    f.remaining -= 1
            return [_Fault(**{**f.__dict__}) for f in hit]

    # ------------------------------------------------------------------ inspection
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_matching(self, pattern: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path (without the query string, as for faults) matches ``pattern``."""
        rx = re.compile(pattern)
        return [r for r in self.requests if rx.search(urlsplit(r.path).path) and method in (None, r.method)]

    def transcript(self) -> str:
        """All recorded requests as text (paths, headers without the token value, bodies)."""
        return "\n\n".join(r.text() for r in self.requests)

    @property
    def handler_errors(self) -> list[str]:
        """Unexpected exceptions raised inside the server (should stay empty)."""
        with self._lock:
            return list(self._errors)

    def repo_exists(self, repo_id: str) -> bool:
        return self._repo_dir(repo_id).is_dir()

    def repo_meta(self, repo_id: str) -> dict[str, Any]:
        return dict(self._load_repo(repo_id).meta)

    def head(self, repo_id: str, revision: str = "main") -> str:
        """The commit id a branch points to."""
        return self._resolve_rev(self._load_repo(repo_id), repo_id, revision)

    def commits(self, repo_id: str, revision: str = "main") -> list[dict[str, Any]]:
        """Commits reachable from ``revision``, newest first (each with ``id``, ``title``, ``files``, ...)."""
        repo = self._load_repo(repo_id)
        out, sha = [], self._resolve_rev(repo, repo_id, revision)
        while sha:
            commit = repo.commit(sha)
            out.append(commit)
            sha = commit["parents"][0] if commit["parents"] else None
        return out

    def repo_files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` of a revision (LFS files resolved to their content)."""
        repo = self._load_repo(repo_id)
        files = repo.commit(self._resolve_rev(repo, repo_id, revision))["files"]
        return {path: self._read_entry(repo, entry) for path, entry in files.items()}

    def repo_entries(self, repo_id: str, revision: str = "main") -> dict[str, dict[str, Any]]:
        """``{path: {"oid", "size", "lfs"}}`` of a revision (``lfs`` is ``None`` for regular files)."""
        repo = self._load_repo(repo_id)
        return repo.commit(self._resolve_rev(repo, repo_id, revision))["files"]

    # ------------------------------------------------------------------ storage
    def _repo_dir(self, repo_id: str) -> Path:
        ns, _, name = repo_id.partition("/")
        if not (_NAME.match(ns) and _NAME.match(name)) or ".." in repo_id:
            raise _repo_not_found(repo_id)
        return self.root / "repos" / ns / name

    def _load_repo(self, repo_id: str) -> _Repo:
        path = self._repo_dir(repo_id)
        if not (path / "meta.json").is_file():
            raise _repo_not_found(repo_id)
        return _Repo(path, json.loads((path / "meta.json").read_text()))

    @staticmethod
    def _resolve_rev(repo: _Repo, repo_id: str, revision: str) -> str:
        refs = repo.meta["refs"]
        if revision in refs:
            return refs[revision]
        if _COMMIT.match(revision) and (repo.path / "commits" / f"{revision}.json").is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _read_entry(repo: _Repo, entry: dict[str, Any]) -> bytes:
        if entry["lfs"]:
            return (repo.path / "lfs" / entry["lfs"]["oid"]).read_bytes()
        return (repo.path / "blobs" / entry["oid"]).read_bytes()

    @staticmethod
    def _store(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _write_commit(self, repo: _Repo, branch: str, parent: str | None, title: str, description: str,
                      files: dict[str, dict[str, Any]]) -> str:
        seed = json.dumps([parent, title, files, time.time_ns(), next(self._counter)], sort_keys=True)
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = {"id": sha, "parents": [parent] if parent else [], "title": title, "message": description,
                  "date": _now(), "authors": [self.user], "files": files}
        self._store(repo.path / "commits" / f"{sha}.json", json.dumps(commit, indent=1).encode())
        repo.meta["refs"][branch] = sha
        repo.meta["lastModified"] = commit["date"]
        repo.save_meta()
        return sha

    def _add_blob(self, repo: _Repo, data: bytes) -> dict[str, Any]:
        oid = git_blob_sha1(data)
        self._store(repo.path / "blobs" / oid, data)
        return {"oid": oid, "size": len(data), "lfs": None}

    @staticmethod
    def _lfs_entry(oid: str, size: int) -> dict[str, Any]:
        pointer = lfs_pointer(oid, size)
        return {"oid": git_blob_sha1(pointer), "size": size,
                "lfs": {"oid": oid, "size": size, "pointerSize": len(pointer)}}

    @staticmethod
    def upload_mode(path: str, size: int, sample: bytes) -> str:
        """``"lfs"`` for LFS patterns, files >= 10 MB and binary files (a NUL byte in the sample), else
        ``"regular"``."""
        name = path.rsplit("/", 1)[-1]
        if size >= LFS_SIZE_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS):
            return "lfs"
        return "regular"

    def _sign(self, repo_id: str, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{repo_id}/{oid}/{size}".encode(), "sha256").hexdigest()[:32]


# ---------------------------------------------------------------------- HTTP layer
class _Drop(Exception):
    """Close the connection without answering."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "loopback-hub/1.0"
    timeout = 30  # a stuck client connection ends after this many seconds

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # requests are recorded, not printed
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # -- request plumbing
    def _read_body(self, limit: int | None = None) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)  # CRLF after the chunk
                if limit is not None and len(out) >= limit:
                    return bytes(out[:limit])
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _auth(self) -> bool | None:
        value = self.headers.get("Authorization")
        if value is None:
            return None
        if self.hub.token is None:  # no token configured: any bearer token is accepted
            return True
        return hmac.compare_digest(value.encode(), f"Bearer {self.hub.token}".encode())

    def _serve(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        headers = {k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers.items()}
        record = RecordedRequest(method, self.path, headers, b"", self._auth())
        with hub._lock:
            hub._requests.append(record)
        faults = hub._take_faults(method, split.path)
        try:
            drop = next((f for f in faults if f.kind == "drop"), None)
            if drop is not None:
                length = int(self.headers.get("Content-Length") or 0)
                record.body = self._read_body(limit=max(1, int(length * drop.fraction)) if length else 1)
                record.fault = "drop"
                raise _Drop
            record.body = self._read_body()
            for fault in faults:
                if fault.kind == "delay" and hub._stop.wait(fault.seconds):
                    raise _Drop  # server stopping
            fail = next((f for f in faults if f.kind == "fail"), None)
            if fail is not None:
                record.fault = "fail"
                raise HubError(fail.status, f"Injected failure ({fail.status}) on {split.path}", headers=fail.headers)
            status, body, extra = self._route(method, split.path, parse_qs(split.query), record)
            self._send(record, status, body, extra, head=method == "HEAD")
        except _Drop:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except HubError as err:
            extra = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                extra["X-Error-Code"] = err.code
            self._send(record, err.status, {"error": err.message, **err.extra}, extra, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug in the server: answer 500 and remember it
            with hub._lock:
                hub._errors.append(f"{method} {split.path}: {type(err).__name__}: {err}")
            self._send(record, 500, {"error": f"loopback hub bug: {type(err).__name__}: {err}"}, {},
                       head=method == "HEAD")

    def _send(self, record: RecordedRequest, status: int, body: Any, headers: dict[str, str], *,
              head: bool = False) -> None:
        if isinstance(body, bytes):
            payload, ctype = body, headers.pop("Content-Type", "application/octet-stream")
        else:
            payload, ctype = json.dumps(body).encode(), headers.pop("Content-Type", "application/json")
        record.status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    # -- routing
    def _route(self, method: str, path: str, query: dict[str, list[str]],
               record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if record.authorized is False:
            raise HubError(401, "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "whoami-v2"] and method == "GET":
            self._require_token(record)
            return 200, self._whoami(), {}
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(record.body)
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            self._require_token(record)
            return self._create_repo(json.loads(record.body or b"{}"))
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            return self._api_repo(method, repo_id, rest, query, record)
        if parts[0] == "_lfs" and len(parts) >= 4:
            return self._lfs_object(method, f"{parts[1]}/{parts[2]}", parts[3:], query, record)
        if len(parts) >= 5 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]:
            if parts[5:] == ["batch"] and method == "POST":
                self._require_token(record)
                return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}", json.loads(record.body or b"{}"))
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{parts[0]}/{parts[1]}"
            return self._resolve(repo_id, parts[3], "/".join(parts[4:]), record)
        if parts[:2] == ["api", "models"] and len(parts) == 3:
            raise _repo_not_found(parts[2])
        raise HubError(404, f"Not found: {method} {path}")

    def _require_token(self, record: RecordedRequest) -> None:
        if self.hub.token is not None and not record.authorized:
            raise HubError(401, "Authorization header with a valid bearer token required")

    def _readable(self, repo_id: str, record: RecordedRequest) -> _Repo:
        hub = self.hub
        repo = hub._load_repo(repo_id)
        if hub.token is not None and not record.authorized and (repo.meta["private"] or hub.require_auth_for_reads):
            # the Hub hides private repos from anonymous users behind a 401 "not found"
            raise HubError(401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _whoami(self) -> dict[str, Any]:
        orgs = [{"type": "org", "name": o, "roleInOrg": "write"} for o in (self.hub.orgs or ())]
        return {"type": "user", "id": "0" * 24, "name": self.hub.user, "fullname": "Loopback Tester",
                "orgs": orgs, "auth": {"type": "access_token",
                                       "accessToken": {"displayName": "loopback", "role": "write"}}}

    def _validate_yaml(self, body: bytes) -> tuple[int, Any, dict[str, str]]:
        import yaml

        content = json.loads(body or b"{}").get("content", "")
        if content.startswith("---"):
            header = content[3:].split("\n---", 1)
            try:
                meta = yaml.safe_load(header[0]) if len(header) == 2 else None
            except yaml.YAMLError as err:
                return 400, {"errors": [{"message": f"Invalid YAML in README.md metadata: {err}"}]}, {}
            if len(header) != 2 or not isinstance(meta, (dict, type(None))):
                return 400, {"errors": [{"message": "README.md metadata must be a YAML mapping between '---'"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        name, org = payload.get("name"), payload.get("organization") or hub.user
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "The loopback Hub only serves model repos")
        if not (isinstance(name, str) and _NAME.match(name) and _NAME.match(org)) or "--" in name or ".." in name:
            raise HubError(400, f"Invalid repo name: {org}/{name}")
        if hub.orgs is not None and org not in (hub.user, *hub.orgs):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {org!r}")
        repo_id = f"{org}/{name}"
        url = f"{hub.url}/{repo_id}"
        with hub._lock:
            path = hub._repo_dir(repo_id)
            if (path / "meta.json").is_file():
                raise HubError(409, "You already created this model repo", extra={"url": url})
            path.mkdir(parents=True)
            repo = _Repo(path, {"id": repo_id, "private": payload.get("visibility") == "private"
                                or bool(payload.get("private")), "refs": {}, "createdAt": _now()})
            files = {".gitattributes": hub._add_blob(repo, GITATTRIBUTES.encode())}
            hub._write_commit(repo, "main", None, "initial commit", "", files)
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _api_repo(self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]],
                  record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        if method == "GET" and not rest:
            return self._repo_info(repo_id, "main", query, record)
        if method == "GET" and len(rest) == 2 and rest[0] == "revision":
            return self._repo_info(repo_id, rest[1], query, record)
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            return self._tree(repo_id, rest[1], "/".join(rest[2:]), query, record)
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            return self._paths_info(repo_id, rest[1], record)
        if method == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit"):
            self._require_token(record)
            if query.get("create_pr", ["0"])[0] not in ("0", "", "false", "False"):
                raise HubError(400, "Pull requests are not supported by the loopback Hub")
            if rest[0] == "preupload":
                return self._preupload(repo_id, rest[1], json.loads(record.body or b"{}"))
            return self._commit(repo_id, rest[1], record.body)
        if method == "POST" and len(rest) >= 2 and rest[0] == "branch":
            self._require_token(record)
            branch = "/".join(rest[1:])
            with hub._lock:
                repo = hub._load_repo(repo_id)
                if branch in repo.meta["refs"]:
                    raise HubError(409, f"Reference already exists: refs/heads/{branch}")
                start = json.loads(record.body or b"{}").get("startingPoint") or "main"
                repo.meta["refs"][branch] = hub._resolve_rev(repo, repo_id, start)
                repo.save_meta()
            return 200, {}, {}
        raise HubError(404, f"Not found: {method} /api/models/{repo_id}/{'/'.join(rest)}")

    def _repo_info(self, repo_id: str, revision: str, query: dict[str, list[str]],
                   record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        repo = self._readable(repo_id, record)
        sha = self.hub._resolve_rev(repo, repo_id, revision)
        commit = repo.commit(sha)
        blobs = query.get("blobs", ["False"])[0].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(blobId=entry["oid"], size=entry["size"])
                if entry["lfs"]:
                    sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        info = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": repo_id.split("/")[0], "sha": sha, "lastModified": commit["date"],
                "createdAt": repo.meta["createdAt"], "private": repo.meta["private"], "disabled": False,
                "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(e["size"] for e in commit["files"].values())}
        return 200, info, {}

    @staticmethod
    def _tree_entry(path: str, entry: dict[str, Any] | None) -> dict[str, Any]:
        if entry is None:  # a directory
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = dict(entry["lfs"])
        return out

    @staticmethod
    def _directories(files: dict[str, Any]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]],
              record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        repo = self._readable(repo_id, record)
        files = repo.commit(self.hub._resolve_rev(repo, repo_id, revision))["files"]
        dirs = self._directories(files)
        path = path.strip("/")
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        prefix = f"{path}/" if path else ""
        out = []
        for name in sorted(set(files) | dirs):
            if not name.startswith(prefix):
                continue
            if not recursive and "/" in name[len(prefix):]:
                continue
            out.append(self._tree_entry(name, files.get(name)))
        return 200, out, {}

    def _paths_info(self, repo_id: str, revision: str, record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        repo = self._readable(repo_id, record)
        files = repo.commit(self.hub._resolve_rev(repo, repo_id, revision))["files"]
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(record.body or b"{}").get("paths", [])
        else:
            paths = parse_qs(record.body.decode()).get("paths", [])
        dirs = self._directories(files)
        out = [self._tree_entry(p, files.get(p)) for p in paths if p in files or p in dirs]
        return 200, out, {}

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        repo = hub._load_repo(repo_id)
        current = repo.commit(hub._resolve_rev(repo, repo_id, revision))["files"]
        out = []
        for item in payload.get("files", []):
            mode = hub.upload_mode(item["path"], int(item["size"]), base64.b64decode(item.get("sample", "")))
            entry = current.get(item["path"])
            oid = None
            if entry is not None and bool(entry["lfs"]) == (mode == "lfs"):
                oid = entry["lfs"]["oid"] if entry["lfs"] else entry["oid"]
            out.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": out, "commitOid": repo.meta["refs"].get(revision)}, {}

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        repo = hub._load_repo(repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, "Only LFS uploads are supported by the loopback Hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and _OID.match(oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": int(size or 0),
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            stored = repo.path / "lfs" / oid
            if stored.is_file() and stored.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # already there: no action
                continue
            base = f"{hub.url}/_lfs/{quote(repo_id)}/{oid}"
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{base}?size={size}&sig={hub._sign(repo_id, oid, size)}", "expires_in": 3600},
                "verify": {"href": f"{base}/verify", "header": {}},
            }})
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, \
            {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_object(self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]],
                    record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        repo = hub._load_repo(repo_id)
        oid = rest[0]
        if not _OID.match(oid):
            raise HubError(400, f"Invalid LFS oid: {oid}")
        if method == "PUT" and len(rest) == 1:  # a pre-signed upload URL: no Authorization needed
            size = int(query.get("size", ["-1"])[0])
            if not hmac.compare_digest(query.get("sig", [""])[0], hub._sign(repo_id, oid, size)):
                raise HubError(403, "Invalid or expired upload signature")
            data = record.body
            if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, f"Uploaded object does not match its oid/size ({len(data)} bytes received)")
            hub._store(repo.path / "lfs" / oid, data)
            return 200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}
        if method == "POST" and rest[1:] == ["verify"]:
            self._require_token(record)
            body = json.loads(record.body or b"{}")
            stored = repo.path / "lfs" / oid
            if not stored.is_file() or stored.stat().st_size != body.get("size"):
                raise HubError(404, f"LFS object {oid} not found")
            return 200, {"success": True}, {}
        raise HubError(404, f"Not found: {method} /_lfs/{repo_id}/{'/'.join(rest)}")

    def _commit(self, repo_id: str, revision: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        with hub._lock:
            repo = hub._load_repo(repo_id)
            if revision not in repo.meta["refs"]:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = repo.meta["refs"][revision]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commit(parent)["files"])
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key in ("file", "lfsFile") and (not path or path.startswith("/") or ".." in path.split("/")):
                    raise HubError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    data = base64.b64decode(value["content"])
                    if b"\0" in data[:8192]:
                        raise HubError(400, f"Your push was rejected because it contains binary files: {path}. "
                                            "Please use LFS for binary files.")
                    files[path] = hub._add_blob(repo, data)
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    stored = repo.path / "lfs" / oid
                    if not (_OID.match(oid) and stored.is_file()):
                        raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that "
                                            f"does not exist ({path}, oid {oid})")
                    files[path] = hub._lfs_entry(oid, stored.stat().st_size)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unsupported commit operation: {key!r}")
            sha = hub._write_commit(repo, revision, parent, header.get("summary", ""),
                                    header.get("description", ""), files)
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo_id}/commit/{sha}",
                     "hookOutput": "", "pullRequestUrl": None}, {}

    def _resolve(self, repo_id: str, revision: str, path: str,
                 record: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        hub = self.hub
        repo = self._readable(repo_id, record)
        sha = hub._resolve_rev(repo, repo_id, revision)
        entry = repo.commit(sha)["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", extra={})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{entry["oid"]}"'}
        if entry["lfs"]:
            etag = f'"{entry["lfs"]["oid"]}"'
            headers.update({"ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(entry["size"])})
        data = hub._read_entry(repo, entry)
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start:end + 1], 206
        return status, data, headers


# ---------------------------------------------------------------------- pytest fixtures
@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """A running loopback Hub with token ``hub_server.token`` (fresh storage for every test)."""
    server = HubServer(tmp_path_factory.mktemp("loopback-hub"), token="hf_loopbackTEST" + secrets.token_hex(12))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class OnlineClient:
    """What ``hub_client`` yields: the server, its URL and the token, plus a private cache folder."""

    server: HubServer
    endpoint: str
    token: str
    cache_dir: Path


def online_client(monkeypatch: pytest.MonkeyPatch, server: HubServer, cache_dir: Path) -> OnlineClient:
    """Switch the in-process ``huggingface_hub`` client online and point it at ``server`` until ``monkeypatch``
    is undone.

    The client reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE``/``HF_HUB_DISABLE_XET`` once, into
    ``huggingface_hub.constants``, when it is first imported (tests/conftest.py sets offline mode before that), and
    every caller (``HfApi``, ``hf_hub_download``, transformers' ``is_offline_mode``) reads those module attributes
    at call time. So the attributes are patched (and the env vars too, for anything that reads the environment
    later); the shared HTTP session is closed before and after so that no pooled connection outlives the test.
    """
    from huggingface_hub import constants, hf_hub_url, is_offline_mode
    from huggingface_hub.utils import _http

    url = server.url
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, value in {"HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "ENDPOINT": url,
                        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
                        "HF_HUB_CACHE": str(cache_dir / "hub"), "HF_TOKEN_PATH": str(cache_dir / "token"),
                        "HF_STORED_TOKENS_PATH": str(cache_dir / "stored_tokens"),
                        "AGENT_HARNESSES_PATH": str(cache_dir / "agents.json")}.items():
        monkeypatch.setattr(constants, name, value)
    for name, value in {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
                        "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(cache_dir / "hub"),
                        "HF_TOKEN_PATH": str(cache_dir / "token")}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)
    _http.close_session()  # no pooled connection from an earlier test
    # fail loudly if a future client reads these settings elsewhere
    assert not is_offline_mode(), "could not switch huggingface_hub online"
    assert hf_hub_url("a/b", "f").startswith(url), "could not point huggingface_hub at the loopback Hub"
    return OnlineClient(server, url, server.token or "", cache_dir)


@pytest.fixture
def hub_client(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """``huggingface_hub`` online and pointed at ``hub_server`` for this test only (see :func:`online_client`)."""
    from huggingface_hub.utils import _http

    client = online_client(monkeypatch, hub_server, tmp_path_factory.mktemp("hf-cache"))
    try:
        yield client
    finally:
        _http.close_session()
