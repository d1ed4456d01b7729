"""The official HeartMuLa releases from the Hugging Face Hub, assembled into the layout the loaders read.

    ROOT/tokenizer.json, ROOT/gen_config.json   from HeartMuLa/HeartMuLaGen
    ROOT/HeartMuLa-oss-3B/                      one LM release (base, RL or happy-new-year; all one architecture)
    ROOT/HeartCodec-oss/                        one codec release
    ROOT/HeartTranscriptor-oss/                 optional: the lyrics transcriber (a Hugging Face Whisper folder)
    ROOT/HeartCLAP-oss/                         optional: the CLAP model, if the hub holds it

Only the standard library is imported at the top (the CLI reads the release names for its help).
`huggingface_hub` does the transfers: it resumes interrupted files, and reads HF_ENDPOINT, HF_TOKEN and HF_HOME.
Each repository is asked for its file list first (one short request); a hub that cannot be reached fails there in
seconds, with the commands that fetch the same files by hand.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from heartmula.errors import HeartMuLaError

GEN_REPO = "HeartMuLa/HeartMuLaGen"
GEN_FILES = ("tokenizer.json", "gen_config.json")
# All three LM releases share one architecture and go to the folder name the loaders look for (version 3B).
LM_RELEASES = {
    "happy-new-year": "HeartMuLa/HeartMuLa-oss-3B-happy-new-year",
    "rl": "HeartMuLa/HeartMuLa-RL-oss-3B-20260123",
    "base": "HeartMuLa/HeartMuLa-oss-3B",
}
CODEC_RELEASES = {
    "20260123": "HeartMuLa/HeartCodec-oss-20260123",
    "original": "HeartMuLa/HeartCodec-oss",
}
DEFAULT_LM = "happy-new-year"  # upstream's recommendation, with codec 20260123
DEFAULT_CODEC = "20260123"
TRANSCRIBER_REPO = "HeartMuLa/HeartTranscriptor-oss"
CLAP_REPO = "HeartMuLa/HeartCLAP-oss"
LM_FOLDER = "HeartMuLa-oss-3B"
CODEC_FOLDER = "HeartCodec-oss"
TRANSCRIBER_FOLDER = "HeartTranscriptor-oss"
CLAP_FOLDER = "HeartCLAP-oss"
INFO_TIMEOUT_S = 10.0  # the file-list request: long enough for a slow link, short enough to fail fast offline


@dataclass(frozen=True)
class Part:
    """One hub repository and where its files go under the root."""

    repo_id: str
    folder: str  # relative to the root; "" = the root itself
    files: tuple[str, ...] | None = None  # only these files; None = the whole repository

    def local_dir(self, root: Path) -> Path:
        return root / self.folder if self.folder else root

    def manual_command(self, root: Path, revision: str | None = None) -> str:
        files = " ".join(self.files or ())
        pin = f" --revision {revision}" if revision else ""
        return f"hf download {self.repo_id} {files}{' ' if files else ''}--local-dir {self.local_dir(root)}{pin}"


@dataclass
class DownloadRequest:
    root: Path = Path("ckpt")
    lm: str = DEFAULT_LM
    codec: str = DEFAULT_CODEC
    with_transcriber: bool = False
    with_clap: bool = False
    revisions: dict[str, str] = field(default_factory=dict)  # repo id (or "*" for all) -> branch, tag or commit

    def parts(self) -> list[Part]:
        if self.lm not in LM_RELEASES:
            raise HeartMuLaError(f"unknown LM release {self.lm!r}; choose one of {', '.join(LM_RELEASES)}")
        if self.codec not in CODEC_RELEASES:
            raise HeartMuLaError(f"unknown codec release {self.codec!r}; choose one of {', '.join(CODEC_RELEASES)}")
        parts = [Part(GEN_REPO, "", GEN_FILES), Part(LM_RELEASES[self.lm], LM_FOLDER),
                 Part(CODEC_RELEASES[self.codec], CODEC_FOLDER)]
        if self.with_transcriber:
            parts.append(Part(TRANSCRIBER_REPO, TRANSCRIBER_FOLDER))
        if self.with_clap:
            parts.append(Part(CLAP_REPO, CLAP_FOLDER))
        unknown = set(self.revisions) - {"*"} - {p.repo_id for p in parts}
        if unknown:
            raise HeartMuLaError(f"--revision names {sorted(unknown)[0]}, which this download does not fetch; "
                                 f"it fetches {', '.join(p.repo_id for p in parts)}")
        return parts

    def revision_for(self, part: Part) -> str | None:
        return self.revisions.get(part.repo_id, self.revisions.get("*"))


def parse_revisions(values: list[str], known_repos: list[str]) -> dict[str, str]:
    """`--revision` values: `REV` for every repository, or `REPO=REV` for one (REPO: the full id or its name)."""
    by_name = {repo.split("/")[-1]: repo for repo in known_repos}
    revisions: dict[str, str] = {}
    for value in values:
        repo, sep, rev = value.rpartition("=")
        if not sep:
            revisions["*"] = value
        elif not rev:
            raise HeartMuLaError(f"--revision {value!r} names no revision after '='")
        else:
            revisions[by_name.get(repo, repo)] = rev
    return revisions


@dataclass(frozen=True)
class RemoteSnapshot:
    part: Part
    commit: str
    files: dict[str, int | None]  # file name -> size in bytes (None: the hub did not say)


@dataclass(frozen=True)
class DownloadResult:
    snapshots: list[RemoteSnapshot]  # what was fetched, at which commit
    checked: list[str]  # one line per component the loaders' checks passed


# --- errors -----------------------------------------------------------------------------------------------------
def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the hub could not be reached, for the HTTP clients huggingface_hub versions use."""
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror]
    for module, names in (("httpx", ("TransportError",)), ("httpx2", ("TransportError",)),
                          ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        kinds.extend(getattr(imported, name) for name in names if hasattr(imported, name))
    return tuple(kinds)


def _is_network_error(exc: BaseException) -> bool:
    kinds = _network_error_types()
    seen: BaseException | None = exc
    for _ in range(10):  # the cause chain: LocalEntryNotFoundError wraps the transport error
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_message(parts: list[Part], root: Path, request: DownloadRequest, exc: BaseException) -> str:
    commands = "\n".join(f"  {p.manual_command(root, request.revision_for(p))}" for p in parts)
    return (f"cannot reach the Hugging Face Hub at {_endpoint()} ({type(exc).__name__}: {exc}).\n"
            "Check the connection (or HF_ENDPOINT for a mirror) and run the same command again: finished files are "
            f"kept and partial ones resume.\nOn a machine with access, the same files come from:\n{commands}\n"
            f"then copy {root} here.")


def hub_error(part: Part, revision: str | None, exc: BaseException) -> HeartMuLaError | None:
    """A hub answer that is not the files, as an error that says what to do (None: not a hub answer)."""
    from huggingface_hub.utils import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, RevisionNotFoundError):
        return HeartMuLaError(f"{part.repo_id} has no revision {revision!r}: pass a branch, tag or commit it holds")
    if isinstance(exc, GatedRepoError):
        return HeartMuLaError(f"{part.repo_id} asks for access: accept its terms on the hub, then set HF_TOKEN "
                              "(or run `hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        hint = " (upstream has not published HeartCLAP weights there)" if part.repo_id == CLAP_REPO else ""
        return HeartMuLaError(f"{part.repo_id} is not on {_endpoint()}{hint}, or it is private and needs HF_TOKEN")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return HeartMuLaError(f"the hub answered HTTP {status} for {part.repo_id}: try again later ({exc})")
    return None


def _as_user_error(exc: Exception, part: Part, request: DownloadRequest, parts: list[Part]) -> HeartMuLaError | None:
    if _is_network_error(exc):
        return HeartMuLaError(offline_message(parts, request.root, request, exc))
    if isinstance(exc, OSError) and exc.errno is not None:  # disk full, no permission: not the hub's doing
        return HeartMuLaError(f"cannot write {part.local_dir(request.root)}: {exc.strerror} ({exc.filename or ''})")
    return hub_error(part, request.revision_for(part), exc)


# --- steps ------------------------------------------------------------------------------------------------------
def remote_snapshot(api, part: Part, revision: str | None) -> RemoteSnapshot:
    """The commit a revision points at and the files to fetch from it (one request, INFO_TIMEOUT_S at most)."""
    info = api.model_info(part.repo_id, revision=revision, files_metadata=True, timeout=INFO_TIMEOUT_S)
    siblings = {s.rfilename: s.size for s in (info.siblings or [])}
    if part.files is not None:
        absent = [f for f in part.files if f not in siblings]
        if absent:
            raise HeartMuLaError(f"{part.repo_id} at {info.sha} has no {absent[0]}: is this the right repository?")
        siblings = {f: siblings[f] for f in part.files}
    return RemoteSnapshot(part, info.sha, siblings)


def refuse_other_release(snapshot: RemoteSnapshot, root: Path) -> None:
    """A model folder that holds weight files the release does not list was filled from another release: mixing
    them would load the wrong shards, so ask the user to clear it instead of deleting their files."""
    folder = snapshot.part.local_dir(root)
    if not snapshot.part.folder or not folder.is_dir():
        return
    weights = [p.name for p in folder.iterdir() if p.name.endswith((".safetensors", ".safetensors.index.json"))]
    foreign = sorted(name for name in weights if name not in snapshot.files)
    if foreign:
        raise HeartMuLaError(f"{folder} holds {foreign[0]}, which {snapshot.part.repo_id} does not have: it comes "
                             "from another release. Delete that folder (or pick another target) and run again")


def bytes_to_fetch(snapshot: RemoteSnapshot, root: Path) -> int:
    folder = snapshot.part.local_dir(root)
    total = 0
    for name, size in snapshot.files.items():
        local = folder / name
        if size and not (local.is_file() and local.stat().st_size == size):
            total += size
    return total


def check_free_space(root: Path, needed: int) -> None:
    existing = next((p for p in [root, *root.resolve().parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise HeartMuLaError(f"the download needs {needed / 1e9:.1f} GB but {existing} has {free / 1e9:.1f} GB free")


def fetch(snapshot: RemoteSnapshot, root: Path) -> None:
    from huggingface_hub import snapshot_download

    part = snapshot.part
    snapshot_download(part.repo_id, revision=snapshot.commit, local_dir=part.local_dir(root),
                      allow_patterns=list(part.files) if part.files is not None else None, endpoint=_endpoint())


def check_assembled(root: Path, parts: list[Part]) -> list[str]:
    """The loaders' own checks on the result, reading headers only; returns one line per component."""
    from heartmula.checkpoint import tensor_headers
    from heartmula.codec.model import HeartCodec
    from heartmula.lm.pretrained import check_lm

    files = check_lm(root, "3B")
    lines = [f"language model: {files.model_dir} (tokenizer {files.tokenizer.name}, gen_config "
             f"{files.gen_config.name if files.gen_config else 'defaults'})"]
    HeartCodec.check_folder(root / CODEC_FOLDER)
    lines.append(f"codec: {root / CODEC_FOLDER}")
    for part in parts:
        if part.folder in (TRANSCRIBER_FOLDER, CLAP_FOLDER):
            folder = part.local_dir(root)
            if any(folder.glob("*.safetensors")):
                tensor_headers(folder)  # every file readable, every index entry present
            lines.append(f"{'transcriber' if part.folder == TRANSCRIBER_FOLDER else 'CLAP'}: {folder}")
    return lines


def download(request: DownloadRequest, log=print) -> DownloadResult:
    """Fetch the parts, then check the folder with the loaders' validation."""
    from huggingface_hub import HfApi

    root = request.root
    parts = request.parts()
    api = HfApi(endpoint=_endpoint())
    snapshots = []
    for part in parts:
        try:
            snapshots.append(remote_snapshot(api, part, request.revision_for(part)))
        except HeartMuLaError:
            raise
        except Exception as exc:
            error = _as_user_error(exc, part, request, parts)
            if error is None:
                raise
            raise error from None
    for snapshot in snapshots:
        refuse_other_release(snapshot, root)
    check_free_space(root, sum(bytes_to_fetch(s, root) for s in snapshots))
    for snapshot in snapshots:
        log(f"{snapshot.part.repo_id} @ {snapshot.commit[:12]} -> {snapshot.part.local_dir(root)}")
        try:
            fetch(snapshot, root)
        except Exception as exc:
            error = _as_user_error(exc, snapshot.part, request, parts)
            if error is None:
                raise
            raise error from None
    return DownloadResult(snapshots, check_assembled(root, parts))
