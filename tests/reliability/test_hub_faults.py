"""Hub faults against the loopback Hub (tests/hub_server.py), one table: refused connection, 5xx, 429, a server
that answers late or never, connections dropped mid-upload, a rejected token. For each: the exact outcome
(retried to success, or the error type, status and attempt count), the local folder byte-for-byte intact, the
token in no error, log or request, and — once the fault is gone — a second push that succeeds with the same files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import hub_server as loopback
import pytest
from test_hub import FAST, REPO, assert_no_token, closed_port_url, full_text, output_dir, tree_digest

from hf_divcl.publish.hub import HubAuthError, HubUnreachableError, PushError, push_to_hub

hub_server = loopback.hub_server
hub_client = loopback.hub_client
__all__ = ["output_dir"]  # fixture used below

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

LFS_PUT = r"^/_lfs/[^/]+/[^/]+/[0-9a-f]{64}$"
COMMIT = r"/commit/main$"
PREUPLOAD = r"/preupload/main$"
CREATE = r"^/api/repos/create$"


@dataclass
class Fault:
    inject: list[tuple]  # (server method, pattern, kwargs)
    error: type[Exception] | None = None  # None: the push must succeed despite the fault
    message: str = ""
    attempts: int | None = None
    status: int | None = None
    push: dict = field(default_factory=dict)
    endpoint_down: bool = False


CASES = {
    "refused_connection": Fault([], HubUnreachableError, "unreachable", 2, None, {"retries": 1},
                                endpoint_down=True),
    "500_on_create_repo_once": Fault([("fail", CREATE, {"times": 1, "status": 500})]),
    "502_on_preupload_twice": Fault([("fail", PREUPLOAD, {"times": 2, "status": 502})]),
    "503_on_commit_once": Fault([("fail", COMMIT, {"times": 1, "status": 503})]),
    "503_on_commit_forever": Fault([("fail", COMMIT, {"times": None, "status": 503})], PushError,
                                   "still failing after 3 attempt(s)", 3, 503, {"retries": 2}),
    "500_on_lfs_upload_once": Fault([("fail", LFS_PUT, {"times": 1, "status": 500, "method": "PUT"})]),
    "429_on_commit_once": Fault([("fail", COMMIT, {"times": 1, "status": 429})]),
    "drop_mid_lfs_upload": Fault([("drop", LFS_PUT, {"times": 1, "method": "PUT", "fraction": 0.5})]),
    "drop_mid_commit": Fault([("drop", COMMIT, {"times": 1, "method": "POST", "fraction": 0.5})]),
    "drop_every_commit": Fault([("drop", COMMIT, {"times": None, "method": "POST"})], PushError,
                               "still failing after 2 attempt(s)", 2, None, {"retries": 1}),
    "commit_answers_after_timeout_once": Fault([("delay", COMMIT, {"seconds": 3.0, "times": 1})],
                                               push={"timeout": 0.5}),
    "server_hangs_on_preupload": Fault([("delay", PREUPLOAD, {"seconds": 30.0, "times": None})], PushError,
                                       "Timeout", 2, None, {"timeout": 0.5, "retries": 1}),
    "404_on_commit_not_retried": Fault([("fail", COMMIT, {"times": None, "status": 404})], PushError,
                                       "failed", 1, 404, {"retries": 3}),
    "403_on_create_repo": Fault([("fail", CREATE, {"times": None, "status": 403})], HubAuthError,
                                "refused write access", 1, 403, {"retries": 3}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hub_fault(case, hub_client, output_dir, caplog):
    fault = CASES[case]
    server = hub_client.server
    for method, pattern, kw in fault.inject:
        getattr(server, method)(pattern, **kw)
    caplog.set_level(logging.DEBUG)
    before = tree_digest(output_dir)
    endpoint = closed_port_url() if fault.endpoint_down else hub_client.endpoint
    kwargs = {"retries": 3, **FAST, **fault.push}
    t0 = time.monotonic()
    if fault.error is None:
        push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=endpoint, **kwargs)
        assert server.repo_files(REPO)["model.safetensors"] == (output_dir / "model.safetensors").read_bytes()
        for _, pattern, kw in fault.inject:  # the fault really hit, and the request was sent again
            assert len(server.requests_matching(pattern, method=kw.get("method"))) >= 2
    else:
        with pytest.raises(fault.error) as info:
            push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=endpoint, **kwargs)
        err = info.value
        assert fault.message in str(err) and "intact" in str(err)
        assert err.attempts == fault.attempts and err.status_code == fault.status
        assert_no_token(full_text(err), hub_client.token)
        if not fault.endpoint_down:
            assert len(server.commits(REPO)) <= 1 if server.repo_exists(REPO) else True  # nothing half-committed
    # bounded: per-request timeouts and back-off, never a hang (huggingface_hub itself retries a timed-out request
    # up to 5 times, 1 → 8 s apart, inside each of our attempts)
    assert time.monotonic() - t0 < 120
    assert_no_token(caplog.text + server.transcript(), hub_client.token)
    assert tree_digest(output_dir) == before

    server.clear_faults()  # the fault is gone: pushing again works and uploads the same files
    push_to_hub(output_dir, REPO, token=hub_client.token, endpoint=hub_client.endpoint)
    files = server.repo_files(REPO)
    for name in ("model.safetensors", "config.json", "README.md", "diversity_log.jsonl"):
        assert files[name] == (output_dir / name).read_bytes()
    assert tree_digest(output_dir) == before
