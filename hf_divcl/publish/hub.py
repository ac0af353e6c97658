"""Push a trained output folder to the Hugging Face Hub.

:func:`push_to_hub` uploads what a model repo needs (safetensors weights, tokenizer/processor files, the README.md
card, PNG plots, JSON configs/training arguments, the diversity log as JSONL and as Parquet for the Hub viewer) and
leaves out what must not be published: pickled files (``*.bin``, ``*.pt``, ``*.pkl``, ...), ``checkpoint-*``
folders, optimizer/scheduler/RNG states, and symbolic links that lead outside the folder. The local folder is
only read, never modified; the Parquet copy of the log is written to a temporary staging folder.

Every HTTP request has a timeout (60 s by default), so a server that stops answering cannot hang the push.
Transient failures (connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential back-off; other
failures raise :class:`PushError` (or its subclasses) with a message that says what happened and what to do.
The token is never logged and is scrubbed from every error message.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._common import DIVERSITY_LOG_FILE

logger = logging.getLogger(__name__)

__all__ = [
    "EXCLUDED_DIRS",
    "EXCLUDED_FILES",
    "HubAuthError",
    "HubUnreachableError",
    "PushError",
    "hub_token",
    "push_to_hub",
    "select_files",
    "validate_repo_id",
]

REPO_ID_MAX_LENGTH = 96
# Pickles (unsafe to load: training_args.bin, pytorch_model.bin, optimizer.pt, rng_state.pth, ...) and local-only
# state. Safetensors weights, tokenizer files, JSON, PNG, Markdown and logs are uploaded.
EXCLUDED_FILES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "optimizer.*",
                  "scheduler.*", "rng_state*", "*.lock", "*.tmp", "*.partial", ".DS_Store", ".env", ".env.*", ".netrc")
_SCAN_LIMIT = 20 * 1024 * 1024  # files up to this size are checked for the token before upload
EXCLUDED_DIRS = ("checkpoint-*", "divcl_state", ".git", ".cache", "__pycache__", ".ipynb_checkpoints")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]")
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Exception class names (anywhere in the MRO) of connection-level failures in httpx/httpx2/requests/urllib3/stdlib.
_CONNECT_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "ConnectionRefusedError", "NewConnectionError",
                             "NameResolutionError", "gaierror"})
_TRANSIENT_ERRORS = _CONNECT_ERRORS | {"NetworkError", "TimeoutException", "RemoteProtocolError", "ConnectionError",
                                       "TimeoutError", "Timeout", "ChunkedEncodingError", "ProtocolError"}
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


class PushError(RuntimeError):
    """A push that did not complete. The local folder is intact; the message says what to do next."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts


class HubUnreachableError(PushError):
    """The endpoint could not be reached (refused connection, DNS failure, timeout while connecting)."""


class HubAuthError(PushError):
    """No token, or the Hub rejected it (HTTP 401/403)."""


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``namespace/name`` with Hub-valid parts, else raise ``ValueError`` saying which
    character or rule is wrong."""
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"Invalid repo id {repo_id!r}: expected a non-empty 'namespace/name' string.")
    if len(repo_id) > REPO_ID_MAX_LENGTH:
        raise ValueError(f"Invalid repo id {repo_id[:20]!r}...: it is {len(repo_id)} characters long; the Hub allows "
                         f"at most {REPO_ID_MAX_LENGTH} for 'namespace/name'.")
    for pos, char in enumerate(repo_id):
        if char != "/" and not _NAME_CHARS.fullmatch(char):
            raise ValueError(f"Invalid repo id {repo_id!r}: character {char!r} at position {pos} is not allowed; use "
                             "letters, digits, '-', '_' and '.' in 'namespace/name'.")
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise ValueError(f"Invalid repo id {repo_id!r}: expected exactly one '/' ('namespace/name'), found "
                         f"{len(parts) - 1}.")
    for label, part in zip(("namespace", "name"), parts, strict=True):
        if not part:
            raise ValueError(f"Invalid repo id {repo_id!r}: the {label} is empty ('namespace/name').")
        if part[0] in "-." or part[-1] in "-.":
            raise ValueError(f"Invalid repo id {repo_id!r}: the {label} {part!r} must start and end with a letter, "
                             "digit or '_'.")
        if ".." in part or "--" in part:
            raise ValueError(f"Invalid repo id {repo_id!r}: '..' and '--' are not allowed in the {label} {part!r}.")
    if parts[1].endswith(".git"):
        raise ValueError(f"Invalid repo id {repo_id!r}: the name must not end with '.git'.")
    return repo_id


def hub_token(token: str | None = None) -> str | None:
    """The token to use: ``token`` if given, else ``HF_TOKEN``, else the one stored by ``hf auth login``
    (``None`` if there is none). The value is never printed or logged."""
    if token:
        return token.strip()
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env
    from huggingface_hub import get_token

    return get_token()


def _excluded(rel: Path, is_dir: bool) -> bool:
    name = rel.name
    patterns = EXCLUDED_DIRS if is_dir else EXCLUDED_FILES
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _escapes(root: Path, rel: Path) -> bool:
    """A symbolic link (or a path through one) whose target lies outside ``root``: never uploaded."""
    target = (root / rel).resolve()
    if target.is_relative_to(root.resolve()):
        return False
    logger.warning("Not uploading %s: it is a link to %s, outside %s.", rel.as_posix(), target, root)
    return True


@contextmanager
def _request_timeout(seconds: float | None) -> Iterator[None]:
    """Give every request of huggingface_hub's shared HTTP client a timeout, restoring the client afterwards.

    The timeout goes in through the public ``set_client_factory``: a factory that wraps the one installed, so that
    every client made during the push has it (the library makes a new one after a connection error) and a caller's
    own factory (proxy, certificates) still builds the client.
    """
    if seconds is None:
        yield
        return
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    # huggingface_hub has no public getter for the installed factory; without it, a caller's own factory could be
    # neither wrapped nor put back afterwards
    previous = _http._GLOBAL_CLIENT_FACTORY

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(seconds)
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


def select_files(output_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(uploaded, skipped)`` relative POSIX paths of ``output_dir`` (see module docstring for the rules)."""
    root = Path(output_dir)
    uploaded: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        for d in list(dirnames):
            if _excluded(base / d, is_dir=True):
                dirnames.remove(d)
                skipped.append((base / d).as_posix() + "/")
        dirnames.sort()
        for f in sorted(filenames):
            rel = base / f
            if _excluded(rel, is_dir=False) or not (root / rel).is_file() or _escapes(root, rel):
                skipped.append(rel.as_posix())
            else:
                uploaded.append(rel.as_posix())
    return sorted(uploaded), sorted(skipped)


def _jsonl_to_parquet(src: Path, dst: Path) -> int:
    """Write the records of a diversity JSONL log to Parquet; returns the number of rows (0: nothing written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..diversity.log import read_diversity_log

    rows = [r for r in read_diversity_log(src) if isinstance(r, dict)]
    if not rows:
        return 0
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, [])
    arrays = {}
    for key in columns:
        values = [row.get(key) for row in rows]
        try:
            arrays[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            # mixed types in one column: keep every value, as its JSON text
            arrays[key] = pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
    pq.write_table(pa.table(arrays), dst)
    return len(rows)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _status_code(err: BaseException) -> int | None:
    for exc in _chain(err):
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def _retry_after(err: BaseException) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (429/503), if any."""
    for exc in _chain(err):
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        value = str(headers.get("Retry-After", "")).strip()
        if value.isdigit():
            return float(value)
    return None


def _has_error(err: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for exc in _chain(err) for cls in type(exc).__mro__)


def _is_transient(err: BaseException) -> bool:
    code = _status_code(err)
    if code is not None:
        return code in _TRANSIENT_STATUS or code >= 500
    return _has_error(err, _TRANSIENT_ERRORS)


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _describe(err: BaseException, token: str | None) -> str:
    """One line about the underlying error, token scrubbed."""
    msg = " ".join(str(err).split()) or type(err).__name__
    if len(msg) > 500:
        msg = msg[:500] + "..."
    return _scrub(f"{type(err).__name__}: {msg}", token)


def push_to_hub(output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
                endpoint: str | None = None, commit_message: str = "Upload diversity-window model (hf_divcl)",
                revision: str | None = None, retries: int = 3, backoff: float = 1.0,
                timeout: float | None = 60.0, log_file: str = DIVERSITY_LOG_FILE) -> str:
    """Upload a training output folder to the model repo ``repo_id`` (created if missing) and return the commit URL.

    Args:
        output_dir: the folder written by training (``model.save``/``trainer.save_model``, card, plots, logs).
        repo_id: ``namespace/name``.
        token: Hub token (default: :func:`hub_token`); never logged.
        private: create the repo as private (ignored if it already exists).
        endpoint: Hub URL (default: ``HF_ENDPOINT`` or https://huggingface.co).
        commit_message: the commit title.
        revision: branch to commit to (created from ``main`` if missing); default ``main``.
        retries: how many times a transient failure is retried.
        backoff: seconds before the first retry, doubled each time (at least the server's ``Retry-After``,
            at most 60 s).
        timeout: seconds each HTTP request may wait for the connection, a read or a write before it fails (and
            is retried); ``None`` waits forever.

    Raises:
        ValueError: invalid ``repo_id``; FileNotFoundError: no such ``output_dir``.
        HubAuthError: no token or token rejected. HubUnreachableError: endpoint unreachable after the retries.
        PushError: any other failure (HTTP error, retries exhausted).
    """
    validate_repo_id(repo_id)
    root = Path(output_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Cannot push {str(output_dir)!r}: it is not a directory. Pass the training output "
                                "folder (the one holding the saved model).")
    if retries < 0 or backoff < 0 or (timeout is not None and not timeout > 0):
        raise ValueError(f"retries and backoff must be >= 0 and timeout > 0 (or None), got retries={retries}, "
                         f"backoff={backoff}, timeout={timeout}.")
    uploaded, skipped = select_files(root)
    if not any(f.endswith(".safetensors") for f in uploaded) and any(
            fnmatch.fnmatch(Path(f).name, "pytorch_model*.bin") for f in skipped):
        raise ValueError(f"{root} holds its weights only as pickled pytorch_model*.bin, which is not uploaded. Save "
                         "the model with safetensors (the default of model.save / save_pretrained) and push again.")
    if not uploaded:
        raise ValueError(f"Nothing to upload in {root}: every file is excluded ({', '.join(skipped[:5])}...).")
    tok = hub_token(token)
    if not tok:
        raise HubAuthError("No Hugging Face token found: pass token=..., set HF_TOKEN, or run `hf auth login`. "
                           f"Nothing was uploaded; the files in {root} are unchanged.")

    from huggingface_hub import CommitOperationAdd, HfApi, constants

    api = HfApi(endpoint=endpoint, token=tok, library_name="hf_divcl")
    where = api.endpoint
    with tempfile.TemporaryDirectory(prefix="hf_divcl_push_") as staging, _request_timeout(timeout):
        sources = {rel: root / rel for rel in uploaded}
        if log_file in sources:  # the log also as Parquet, for the Hub's dataset viewer and pandas
            parquet_name = str(Path(log_file).with_suffix(".parquet"))
            parquet = Path(staging) / Path(parquet_name).name
            try:
                n = _jsonl_to_parquet(sources[log_file], parquet)
            except ImportError:
                n = 0
                logger.warning("pyarrow is not installed: %s is uploaded without its Parquet copy.", log_file)
            except Exception as err:  # a log that Arrow cannot type must not block the push
                n = 0
                logger.warning("Could not convert %s to Parquet (%s); uploading the JSONL only.", log_file,
                               _describe(err, tok))
            if n:
                sources[parquet_name] = parquet  # replaces a stale copy from the folder, if any
        leaking = [rel for rel, path in sorted(sources.items())
                   if path.stat().st_size <= _SCAN_LIMIT and tok.encode() in path.read_bytes()]
        if leaking:
            raise PushError(f"Refusing to push: {', '.join(leaking)} in {root} contains your Hub token. Remove it "
                            "from the file(s) (and consider rotating the token), then push again. Nothing was "
                            "uploaded.")
        if skipped:
            logger.info("Not uploading (pickles, checkpoints, training state): %s", ", ".join(skipped))
        logger.info("Pushing %d files from %s to %s at %s", len(sources), root, repo_id, where)

        attempts = retries + 1
        for attempt in range(1, attempts + 1):
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                if revision not in (None, constants.DEFAULT_REVISION):
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
                              for rel, path in sorted(sources.items())]  # fresh each attempt (they are stateful)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".*about to commit a data file.*")
                    info = api.create_commit(repo_id, operations=operations, commit_message=commit_message,
                                             revision=revision)
                logger.info("Pushed %s to %s (commit %s)", root, repo_id, info.oid)
                return str(info.commit_url)
            except Exception as err:  # classified below; never re-raised with the token in it
                failure = err
            status = _status_code(failure)
            detail = _describe(failure, tok)
            if _has_error(failure, frozenset({"OfflineModeIsEnabled"})):
                raise PushError("huggingface_hub is in offline mode (HF_HUB_OFFLINE=1): unset it to push. Nothing "
                                f"was uploaded; the files in {root} are unchanged.") from None
            if status in (401, 403):
                what = "rejected the token (HTTP 401)" if status == 401 else "refused write access (HTTP 403)"
                raise HubAuthError(f"The Hub at {where} {what}. Check that the token is valid and has write access "
                                   f"to {repo_id!r}. Local files in {root} are intact; the push can be retried. "
                                   f"[{detail}]", status_code=status, attempts=attempt) from None
            if not _is_transient(failure):
                raise PushError(f"Push of {root} to {repo_id!r} at {where} failed: {detail}. Local files are intact; "
                                "fix the cause and push again.", status_code=status, attempts=attempt) from None
            if attempt < attempts:
                wait = min(60.0, max(backoff * 2 ** (attempt - 1), _retry_after(failure) or 0.0))
                logger.warning("Push attempt %d/%d to %s failed (%s); retrying in %.2fs", attempt, attempts, where,
                               detail, wait)
                time.sleep(wait)
        if _has_error(failure, _CONNECT_ERRORS):
            raise HubUnreachableError(f"The Hub endpoint {where} is unreachable ({detail}) after {attempts} "
                                      f"attempt(s). Local files in {root} are intact; check the network/HF_ENDPOINT, "
                                      "then retry the push.", status_code=status, attempts=attempts) from None
        raise PushError(f"Push of {root} to {repo_id!r} at {where} still failing after {attempts} attempt(s): "
                        f"{detail}. Local files are intact; the push can be retried later.",
                        status_code=status, attempts=attempts) from None
