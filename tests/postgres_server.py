"""A throwaway PostgreSQL cluster with pgvector on 127.0.0.1, for the tests of the PostgreSQL library index.

The cluster lives in a temporary folder and runs with the binaries of an installed PostgreSQL (Debian's
/usr/lib/postgresql/NN/bin, or whatever `pg_config` is on PATH) whose share folder has pgvector's control file.
PostgreSQL refuses to run as root, so under root the folder is handed to the `postgres` user (or `nobody`) and the
server runs as that user through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "heartmula"


def find_bindir() -> Path | None:
    """The bin folder of the newest installed PostgreSQL that has pgvector, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("pg_config")
    if on_path:
        candidates.append(subprocess.run([on_path, "--bindir"], capture_output=True, text=True).stdout.strip())
    for bindir in map(Path, candidates):
        if not (bindir / "initdb").is_file() or not (bindir / "pg_config").is_file():
            continue
        share = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True).stdout
        if (Path(share.strip()) / "extension" / "vector.control").is_file():
            return bindir
    return None


def _run_as() -> list[str]:
    """The command prefix that runs the server as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """initdb + pg_ctl start in a temporary folder; `url` is a superuser's postgresql:// URL without password."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="heartmula-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.prefix = _run_as()
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{args[0]} failed: {result.stderr}{log.read_text() if log.is_file() else ''}")

    def start(self) -> Cluster:
        if self.prefix:
            user = pwd.getpwnam(self.prefix[2])
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
