"""A stand-in Hugging Face Hub for offline tests.

``FakeHub`` is a stdlib HTTP server on 127.0.0.1 that answers the subset of the Hub API that huggingface_hub 2.4 and
transformers 5.23 use to create repos, commit files (inline base64 only: no LFS/Xet), create branches and PRs, and
download files. The ``fake_hub`` fixture starts one and points both libraries at it, online, for a single test.

PYTEST_DONT_REWRITE: server code, imported by test modules before ``pytest_plugins`` registers it as a plugin.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


if TYPE_CHECKING:
    from typing_extensions import Self

DEFAULT_TOKEN = "hf_fake_hub_token"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_Response = tuple[int, dict[str, str], bytes]


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1: the Hub's oid/ETag for a regular file, which the client compares to skip unchanged files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error with the ``X-Error-Code`` huggingface_hub maps to its typed errors (RepoNotFound, ...)."""

    def __init__(
        self, status: int, code: str = "", message: str = "", headers: dict[str, str] | None = None, **body: Any
    ) -> None:
        super().__init__(message or code)
        self.status, self.code, self.message, self.headers, self.body = status, code, message or code, headers, body


@dataclass
class _Repo:
    """One repo: refs (branches and ``refs/pr/N``) point at commits; every commit stores its full file snapshot."""

    private: bool
    refs: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)
    num_prs: int = 0

    def resolve(self, revision: str) -> str:
        """Map a ref name or a (possibly abbreviated) commit sha to a commit sha, as the Hub does."""
        if revision in self.refs:
            return self.refs[revision]
        found = [sha for sha in self.snapshots if len(revision) >= 7 and sha.startswith(revision)]
        if len(found) != 1:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return found[0]


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class FakeHub:
    """In-memory Hub server; use as a context manager, inspect ``files()``, ``refs()``, ``requests``, ``auth_headers``.

    Writes (and ``whoami``) need an ``Authorization`` header, like the real Hub; private repos are hidden from
    anonymous reads. ``requests`` holds ``(method, raw URL path without query)`` of every request received.
    """

    def __init__(self, user: str = "tester") -> None:
        self.user = user
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._failures: list[tuple[int | None, str | None]] = []  # (status or None to drop, path filter)
        self._lock = threading.RLock()
        self._commits = 0
        self._server: _Server | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._server = _Server(self)
        serve = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)
        serve.start()  # short poll interval: shutdown() returns within 50 ms instead of 500
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The repo's files at ``revision`` (branch, ``refs/pr/N`` or commit sha), as a fresh dict."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return dict(repo.snapshots[repo.resolve(revision)])

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """Ref name (``main``, ``dev``, ``refs/pr/1``...) to commit sha."""
        with self._lock:
            return dict(self._repos[(repo_type, repo_id)].refs)

    def commit_files(
        self, repo_id: str, files: dict[str, bytes], *, revision: str = "main", repo_type: str = "model"
    ) -> str:
        """Seed a repo server-side (created if missing) without going through the client; returns the commit sha."""
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self._repos[(repo_type, repo_id)] = self._new_repo(private=False)
            repo = self._repos[(repo_type, repo_id)]
            base = repo.resolve(revision) if revision in repo.refs else repo.refs["main"]
            repo.refs[revision] = self._commit(repo, {**repo.snapshots[base], **files}, base, "seed")
            return repo.refs[revision]

    def fail_next(
        self, n: int = 1, status: int = 500, *, drop: bool = False, path_contains: str | None = None
    ) -> None:
        """Make the next ``n`` requests (whose path contains ``path_contains``) fail with ``status``.

        With ``drop=True`` the connection is closed without any response, which the client sees as a network error.
        Note that huggingface_hub retries some calls (preupload, tree listing) on 5xx/network errors with backoff.
        """
        with self._lock:
            self._failures += [(None if drop else status, path_contains)] * n

    # -- request handling (called from server threads) --------------------------------------------------------------

    def _take_failure(self, path: str) -> tuple[int | None, str | None] | None:
        with self._lock:
            for i, (_, pattern) in enumerate(self._failures):
                if pattern is None or pattern in path:
                    return self._failures.pop(i)
        return None

    def _new_repo(self, private: bool) -> _Repo:
        repo = _Repo(private=private)
        repo.refs["main"] = self._commit(repo, {}, None, "initial commit")
        return repo

    def _commit(self, repo: _Repo, files: dict[str, bytes], parent: str | None, message: str) -> str:
        self._commits += 1
        listing = sorted((path, git_blob_oid(data)) for path, data in files.items())
        sha = hashlib.sha1(json.dumps([self._commits, parent, message, listing]).encode()).hexdigest()
        repo.snapshots[sha] = files
        return sha

    def _get_repo(self, repo_type: str, repo_id: str, auth: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not auth):
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def handle(
        self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes, auth: str | None
    ) -> _Response:
        """Route one request; ``raw_path`` is split before unquoting since revisions arrive as ``refs%2Fpr%2F1``."""
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        with self._lock:
            if parts[0] == "api":
                return self._api(method, parts[1:], query, body, auth)
            repo_type = _TYPES[parts.pop(0)] if parts[0] in ("datasets", "spaces") else "model"
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), auth)
        raise HubError(404, message=f"FakeHub has no route for {method} {raw_path}")

    def _api(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes, auth: str | None
    ) -> _Response:
        payload = json.loads(body) if body and parts[3:4] != ["commit"] else {}  # commits are NDJSON, parsed later
        if parts == ["validate-yaml"]:
            return _json({"errors": [], "warnings": []})  # ModelCard.push_to_hub and README commits call it
        if (method != "GET" or parts == ["whoami-v2"]) and not auth:
            raise HubError(401, message="Invalid username or password.")
        if parts == ["whoami-v2"]:
            return _json({"type": "user", "name": self.user, "fullname": self.user, "orgs": [], "auth": {}})
        if parts[0] == "repos" and parts[1:] in (["create"], ["delete"]):
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
            url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
            if parts[1] == "delete":
                self._get_repo(repo_type, repo_id, auth)
                del self._repos[(repo_type, repo_id)]
                return _json({})
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, message="You already created this repo", url=url)  # exist_ok reads "url"
            self._repos[(repo_type, repo_id)] = self._new_repo(payload.get("visibility", "public") != "public")
            return _json({"url": url, "name": repo_id, "id": repo_id})
        if len(parts) < 3 or parts[0] not in _TYPES:
            raise HubError(404, message=f"FakeHub has no route for /api/{'/'.join(parts)}")
        repo_type, repo_id = _TYPES[parts[0]], f"{parts[1]}/{parts[2]}"
        repo = self._get_repo(repo_type, repo_id, auth)
        action, args = (parts[3], parts[4:]) if len(parts) > 3 else ("info", ["main"])
        match method, action:
            case "GET", "info" | "revision":
                return self._info(repo_id, repo, repo.resolve(args[0]))
            case "GET", "tree":
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._tree(repo, repo.resolve(args[0]), "/".join(args[1:]), recursive)
            case "GET", "refs":
                heads = [(n, f"refs/heads/{n}", sha) for n, sha in repo.refs.items() if not n.startswith("refs/")]
                prs = [(n, n, sha) for n, sha in repo.refs.items() if n.startswith("refs/pr/")]
                as_json = [[{"name": n, "ref": r, "targetCommit": s} for n, r, s in refs] for refs in (heads, prs)]
                return _json({"branches": as_json[0], "converts": [], "tags": [], "pullRequests": as_json[1]})
            case "POST", "preupload":
                current = repo.snapshots[repo.resolve(args[0])]
                files = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                    | ({"oid": git_blob_oid(current[f["path"]])} if f["path"] in current else {})
                    for f in payload["files"]
                ]
                return _json({"files": files, "commitOid": repo.resolve(args[0])})
            case "POST", "commit":
                return self._apply_commit(repo_type, repo_id, repo, args[0], body, query.get("create_pr") == ["1"])
            case "POST", "branch":
                if args[0] in repo.refs:
                    raise HubError(409, message=f"Reference already exists: refs/heads/{args[0]}")
                repo.refs[args[0]] = repo.resolve(payload.get("startingPoint") or "main")
                return _json({})
            case "DELETE", "branch":
                if repo.refs.pop(args[0], None) is None:
                    raise HubError(404, "RevisionNotFound", f"Invalid rev id: {args[0]}")
                return _json({})
        raise HubError(404, message=f"FakeHub has no route for {method} /api/{'/'.join(parts)}")

    def _info(self, repo_id: str, repo: _Repo, sha: str) -> _Response:
        files = repo.snapshots[sha]
        return _json(
            {
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "lastModified": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "tags": [],
                "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_oid(d)} for p, d in files.items()],
            }
        )

    def _tree(self, repo: _Repo, sha: str, folder: str, recursive: bool) -> _Response:
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(repo.snapshots[sha].items()):
            if not path.startswith(prefix):
                continue
            dirs = path[len(prefix) :].split("/")[:-1]
            for depth in range(1, len(dirs) + 1 if recursive else min(len(dirs), 1) + 1):
                name = prefix + "/".join(dirs[:depth])
                entries[name] = {"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest()}
            if recursive or not dirs:
                entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
        if folder and not entries:
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on this revision")
        return _json(list(entries.values()))

    def _apply_commit(
        self, repo_type: str, repo_id: str, repo: _Repo, revision: str, body: bytes, create_pr: bool
    ) -> _Response:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if revision not in repo.refs and not create_pr:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        base = repo.resolve(revision)
        if parent := header.get("parentCommit"):
            if not create_pr and not base.startswith(parent):
                raise HubError(412, message=f"Parent commit {parent} is not the head of {revision}")
            base = repo.resolve(parent)
        files = dict(repo.snapshots[base])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                raw = value["content"]
                files[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "EntryNotFound", f"{value['path']} does not exist")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            elif key != "header":
                raise HubError(400, message=f"FakeHub only accepts inline files, got a {key!r} operation")
        pr_url = None
        if create_pr:
            repo.num_prs += 1
            revision = f"refs/pr/{repo.num_prs}"
            pr_url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{repo.num_prs}"
        repo.refs[revision] = sha = self._commit(repo, files, base, header.get("summary", ""))
        commit_url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{sha}"
        return _json({"success": True, "commitOid": sha, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, auth: str | None) -> _Response:
        sha = self._get_repo(repo_type, repo_id, auth).resolve(revision)
        data = self._repos[(repo_type, repo_id)].snapshots[sha].get(path)
        if data is None:  # the client caches "missing at this commit" using X-Repo-Commit
            raise HubError(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": sha})
        return 200, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(data)}"'}, data  # Range is ignored: 200 is fine


class _Handler(BaseHTTPRequestHandler):
    """Thin I/O layer: HTTP/1.1 keep-alive (httpx reuses connections), failure injection, then ``FakeHub.handle``."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: pytest output should not carry one access-log line per request."""

    def _dispatch(self) -> None:
        hub, url = self.server.hub, urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        auth = self.headers.get("Authorization")
        with hub._lock:
            hub.requests.append((self.command, url.path))
            if auth:
                hub.auth_headers.append(auth)
        failure = hub._take_failure(url.path)
        if failure is not None and failure[0] is None:
            self.close_connection = True  # no response at all: the client sees a dropped connection
            return
        try:
            if failure is not None:
                raise HubError(failure[0] or 500, message="FakeHub: injected failure")
            status, headers, payload = hub.handle(self.command, url.path, parse_qs(url.query), body, auth)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
            headers |= err.headers or {}
            status, headers, payload = _json({"error": err.message, **err.body}, err.status, headers)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    """Binds 127.0.0.1 on an ephemeral port only; handler threads are daemons so shutdown never hangs."""

    daemon_threads = True

    def __init__(self, hub: FakeHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub


# -- client patching ------------------------------------------------------------------------------------------------

PATCHED_PACKAGES = ("huggingface_hub", "transformers", "hf_clusterable")


def use_fake_hub(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path, token: str | None = DEFAULT_TOKEN
) -> None:
    """Point huggingface_hub and transformers at ``endpoint``, online, with caches and token file under ``hf_home``.

    Env vars alone are too late: huggingface_hub copies them into ``constants`` at import, some modules copy those
    again (``from ..constants import HF_HUB_CACHE``), and ``HfApi`` objects created at import (``hf_api.api`` behind
    ``huggingface_hub.upload_file`` & co, transformers' shared ``hf_api()``) keep the endpoint they were built with.
    So we set the env (for later imports and subprocesses) and patch every already-imported copy; monkeypatch
    undoes all of it after the test. ``token`` is exported as ``HF_TOKEN`` to simulate a logged-in user.
    """
    home = hf_home.resolve()
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_MODULES_CACHE": home / "modules",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
    }
    unset = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN", "HUGGINGFACE_CO_STAGING")
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    switches = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    switches |= {"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name, value in {"HF_ENDPOINT": endpoint, **switches, **{k: str(v) for k, v in paths.items()}}.items():
        monkeypatch.setenv(name, value)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)

    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import _http

    values: dict[str, Any] = {k: str(v) for k, v in paths.items()}
    values |= {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,  # what constants.is_offline_mode() returns; transformers calls that same function
        "HF_HUB_DISABLE_XET": True,  # else upload_folder takes the xet pipeline and downloads may try xet
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    real_is_offline_mode = constants.is_offline_mode
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in PATCHED_PACKAGES):
            continue
        namespace = vars(module)  # the module's own globals only: never trigger lazy imports
        for attr in values.keys() & namespace.keys():
            monkeypatch.setattr(module, attr, values[attr])
        for attr, obj in list(namespace.items()):
            if isinstance(obj, HfApi):
                monkeypatch.setattr(obj, "endpoint", endpoint)
            elif attr == "is_offline_mode" and callable(obj) and obj is not real_is_offline_mode:
                monkeypatch.setattr(module, attr, lambda: False)  # a private copy (none in transformers 5.23)
    if (transformers_hub := sys.modules.get("transformers.utils.hub")) is not None:
        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)  # lazy singleton made in-test is dropped
    # Hosts trusted for parsing repo URLs and for keeping the auth header across redirects.
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    if hasattr(_http, "_HUB_ORIGINS") and hasattr(_http, "_url_origin"):
        monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A running ``FakeHub`` that huggingface_hub and transformers talk to, online, for this test only."""
    from huggingface_hub.utils import close_session

    with FakeHub() as hub:
        use_fake_hub(monkeypatch, hub.endpoint, tmp_path / "hf_home")
        close_session()  # drop pooled connections so nothing stale is reused
        try:
            yield hub
        finally:
            close_session()  # keep-alive sockets to this server are dead after the test
