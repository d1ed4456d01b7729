"""A small stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for the real `huggingface_hub` client.

Serves what `HfApi.model_info`, `HfApi.list_repo_tree` and `hf_hub_download` (hence `snapshot_download`) ask for:
    GET  /api/models/{repo}[/revision/{rev}]   repository info: sha + siblings with sizes
    GET  /api/models/{repo}/tree/{rev}         the file list (one page)
    HEAD /{repo}/resolve/{rev}/{file}          X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{file}          the bytes, honouring `Range: bytes=N-` (resumed downloads);
                                               a file in `cut_once` stops half-way once, as a dropped connection
Unknown repositories and revisions answer 404 with the hub's X-Error-Code header, as the client expects.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""

    def __post_init__(self):
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        self.sha = digest.hexdigest()


@dataclass
class HubStandIn:
    repos: dict[str, Repo] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)  # "METHOD path" of every request served
    authorizations: set[str] = field(default_factory=set)  # Authorization headers seen
    cut_once: set[str] = field(default_factory=set)  # files whose next GET stops half-way (a dropped connection)
    ranges: list[str] = field(default_factory=list)  # "file: Range header" of every ranged GET

    def add_folder(self, repo_id: str, folder: Path, only: tuple[str, ...] | None = None) -> None:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo_id] = Repo({k: v for k, v in files.items() if only is None or k in only})


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data, status: int = 200, error_code: str | None = None, head: bool = False):
        headers = {"Content-Type": "application/json"}
        if error_code:
            headers["X-Error-Code"] = error_code
        self._send(status, json.dumps(data).encode(), headers, head)

    def _repo_at(self, repo_id: str, revision: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._json({"error": "Repository not found"}, 404, "RepoNotFound", head)
            return None
        if revision not in ("main", repo.sha):
            self._json({"error": f"Invalid rev id: {revision}"}, 404, "RevisionNotFound", head)
            return None
        return repo

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        self.hub.requests.append(f"{self.command} {self.path}")
        if self.headers.get("Authorization"):
            self.hub.authorizations.add(self.headers["Authorization"])
        path = unquote(urlparse(self.path).path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 4:  # info at the default branch
            repo = self._repo_at(f"{parts[2]}/{parts[3]}", "main", head)
            if repo is not None:
                self._api(parts[2] + "/" + parts[3], repo, "revision", head)
        elif parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo = self._repo_at(f"{parts[2]}/{parts[3]}", parts[5], head)
            if repo is not None:
                self._api(parts[2] + "/" + parts[3], repo, parts[4], head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            repo = self._repo_at(f"{parts[0]}/{parts[1]}", parts[3], head)
            if repo is not None:
                self._file(repo, "/".join(parts[4:]), head)
        else:
            self._json({"error": "not found"}, 404, None, head)

    def _api(self, repo_id: str, repo: Repo, kind: str, head: bool):
        if kind == "tree":
            entries = [{"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                       for name, data in sorted(repo.files.items())]
            self._json(entries, head=head)
            return
        siblings = [{"rfilename": name, "size": len(data), "blobId": _blob_id(data)}
                    for name, data in sorted(repo.files.items())]
        self._json({"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "disabled": False,
                    "gated": False, "tags": [], "siblings": siblings}, head=head)

    def _file(self, repo: Repo, name: str, head: bool):
        if name not in repo.files:
            self._json({"error": "Entry not found"}, 404, "EntryNotFound", head)
            return
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Accept-Ranges": "bytes"}
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and not head:
            self.hub.ranges.append(f"{name}: {ranged}")
            start = int(ranged[len("bytes="):].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if name in self.hub.cut_once and not head:
            self.hub.cut_once.discard(name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if head:
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return
        self._send(206 if start else 200, data[start:], headers)


class running_hub:
    """`with running_hub(hub) as endpoint:` serves `hub` on a free 127.0.0.1 port for the block."""

    def __init__(self, hub: HubStandIn):
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
