"""The music library index in PostgreSQL with the pgvector extension: the same operations as the folder index
(heartmula.clap.index.ClapIndex), for libraries kept in a database that a team already runs.

Location (what `--index` takes):
    postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[?table=NAME&PARAM=VALUE...]
    (`postgres://` too). `table` names the tracks table (default "heartmula"), `ef_search` the HNSW candidate list
    per query (default HNSW_EF_SEARCH; more finds more of the exact top k, slower), `exact=1` an exact scan even
    where the table has an HNSW index; every other parameter goes to libpq as it is (sslmode, connect_timeout, ...).
    A password may also come from PGPASSWORD or ~/.pgpass, as for psql; messages show the location without it.

A track is one row of the table: its path (the key), title, tags, duration, size, mtime and its HeartCLAP embedding
in a `vector(DIM)` column. The format, dimension and model fingerprint live in a companion table `<NAME>_meta`; a
library built with one HeartCLAP model refuses vectors and queries of another, and every write checks in its own
transaction that the recorded model is still the one the index was opened with, so vectors of two models never mix.
Search ranks by cosine distance (`<=>`; score = 1 - distance, which equals the folder index's dot product because
the embeddings are unit vectors). Below HNSW_MIN_TRACKS tracks the search is an exact scan; from there on the table
gets an HNSW index (approximate; built once when a write crosses the threshold, or at the end of a bulk_load() such as
`index export`, then kept up to date by PostgreSQL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import numpy as np

from heartmula.clap.tracks import FORMAT_VERSION, Hit, Track, open_meta, query_vector, refuse_other_model, track_vectors
from heartmula.errors import HeartMuLaError
from heartmula.extras import optional_import

DEFAULT_TABLE = "heartmula"
CONNECT_TIMEOUT_SECONDS = 10  # libpq's connect_timeout unless the location sets one: a bad address fails by then
# Smaller tables are scanned exactly (bench/results/scale_pgvector.json: about 130 ms at 100k tracks on 2 cores); from
# here on search uses HNSW, which is approximate (the same file: its recall on random vectors, HNSW's worst case).
HNSW_MIN_TRACKS = 100_000
HNSW_EF_SEARCH = 100  # HNSW candidate list per query (pgvector's default is 40); more = better recall, slower
HNSW_BUILD_MEMORY_MB = 1024  # at most this much maintenance_work_mem for building the index (the server's if higher)
HNSW_BYTES_PER_TRACK = 600  # graph bytes of a track besides its vector (neighbour lists, tuple headers), roughly
PAGE = 1024  # rows per export page
PLAIN_STORAGE_MAX_DIM = 1024  # vectors up to 4 KB stay inside the table's 8 KB pages (a larger one would not fit)
FEATURE = "a PostgreSQL library index"
COLUMNS = "path, title, tags, duration, size, mtime"


def is_postgres_location(location: str | os.PathLike) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


@dataclass
class PostgresLocation:
    url: str  # for libpq: the location less the parameters below, with connect_timeout when it had none
    table: str  # the tracks table; `<table>_meta` beside it
    ef_search: int  # HNSW candidate list per query
    exact: bool  # always scan every vector, even where the table has an HNSW index
    shown: str  # the location without its password, for messages


def parse_location(location: str) -> PostgresLocation:
    parsed = urlparse(location)
    params = parse_qsl(parsed.query, keep_blank_values=True)
    ours = dict(params)
    table = ours.get("table", DEFAULT_TABLE)
    shown = location.replace(f":{parsed.password}@", ":***@") if parsed.password else location
    if not parsed.hostname or not parsed.path.strip("/"):
        raise HeartMuLaError(f"{shown}: a PostgreSQL index is postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
                             "?table=NAME")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,49}", table):
        raise HeartMuLaError(f"{shown}: the table name {table!r} must be letters, digits and _ (at most 50)")
    ef_search = ours.get("ef_search", str(HNSW_EF_SEARCH))
    if not ef_search.isdigit() or not 1 <= int(ef_search) <= 1000:
        raise HeartMuLaError(f"{shown}: ef_search must be a whole number from 1 to 1000")
    exact = ours.get("exact", "0")
    if exact not in ("0", "1"):
        raise HeartMuLaError(f"{shown}: exact is 0 (HNSW where the table has it) or 1 (always an exact scan)")
    params = [(k, v) for k, v in params if k not in ("table", "ef_search", "exact")]
    if "connect_timeout" not in ours:
        params.append(("connect_timeout", str(CONNECT_TIMEOUT_SECONDS)))
    url = urlunparse(parsed._replace(query=urlencode(params)))
    return PostgresLocation(url, table.lower(), int(ef_search), exact == "1", shown)


def _address(location: PostgresLocation) -> str:
    parsed = urlparse(location.url)
    return f"{parsed.hostname}:{parsed.port or 5432}/{parsed.path.strip('/')}"


def connect(location: str):
    """(psycopg connection with pgvector's types, PostgresLocation); an unreachable server or a refused login
    raises a HeartMuLaError naming the address within the connect timeout."""
    psycopg = optional_import("psycopg", "scale", FEATURE)
    pgvector_psycopg = optional_import("pgvector.psycopg", "scale", FEATURE)
    where = parse_location(location)
    try:
        conn = psycopg.connect(where.url, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())
        raise HeartMuLaError(f"cannot connect to PostgreSQL at {_address(where)}: {reason}") from None
    try:
        _ensure_extension(conn, _address(where))
        pgvector_psycopg.register_vector(conn)
    except BaseException:
        conn.close()
        raise
    return conn, where


def _ensure_extension(conn, address: str) -> None:
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
        return
    import psycopg

    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege:
        raise HeartMuLaError(f"the database {address} lacks the pgvector extension and this user may not "
                             "add it; a superuser runs `CREATE EXTENSION vector;` in it once") from None
    except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile, psycopg.errors.UndefinedObject):
        raise HeartMuLaError(f"the PostgreSQL server at {address} has no pgvector extension installed "
                             "(Debian/Ubuntu: apt-get install postgresql-NN-pgvector)") from None


class PgVectorIndex:
    """A library index in a PostgreSQL table (created with `dim` when missing and `create`)."""

    def __init__(self, location: str, dim: int | None = None, model: str | None = None, create: bool = True):
        self.conn, where = connect(location)  # names the 'scale' extra when psycopg or pgvector is missing
        self.location, self.table, self.ef_search, self.exact = where.shown, where.table, where.ef_search, where.exact
        self.meta_table = f"{self.table}_meta"
        self.dim, self.model = open_meta(self._read_meta, self._create, self.conn.close, self.location, dim, model,
                                         create, "table")
        self.hnsw = self.has_hnsw()
        self.deferring_hnsw = False  # inside bulk_load()

    def _read_meta(self) -> dict | None:
        if self.conn.execute("SELECT to_regclass(%s)", (self.meta_table,)).fetchone()[0] is None:
            return None
        return dict(self.conn.execute(f"SELECT key, value FROM {self.meta_table}").fetchall()) or None

    def _create(self, dim: int, model: str) -> dict:
        meta = {"format": FORMAT_VERSION, "dim": str(dim), "model": model}
        with self.conn.transaction():
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (path text COLLATE \"C\" PRIMARY KEY, "
                              f"title text, tags text, duration double precision, size bigint, "
                              f"mtime double precision, embedding vector({int(dim)}) NOT NULL)")
            if dim <= PLAIN_STORAGE_MAX_DIM:  # rows in the table's pages: a scan reads no TOAST table
                self.conn.execute(f"ALTER TABLE {self.table} ALTER COLUMN embedding SET STORAGE PLAIN")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {self.meta_table} (key text PRIMARY KEY, "
                              "value text NOT NULL)")
            self.conn.cursor().executemany(f"INSERT INTO {self.meta_table} VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                           list(meta.items()))
        return dict(self.conn.execute(f"SELECT key, value FROM {self.meta_table}").fetchall())

    # -- the model --
    def set_model(self, model: str) -> None:
        """Record `model` as the one whose vectors the table holds (after indexing everything with it)."""
        self.conn.execute(f"UPDATE {self.meta_table} SET value = %s WHERE key = 'model'", (model,))
        self.model = model

    def check_model(self, model: str) -> None:
        refuse_other_model(self.location, self.model, model, "use the --model it was built with, or a new table "
                           "(?table=NAME)")

    def _check_recorded_model(self) -> None:
        """Inside a write's transaction: the model recorded now is still the one this index was opened with (the
        row lock keeps a concurrent set_model from changing it until the write commits)."""
        row = self.conn.execute(f"SELECT value FROM {self.meta_table} WHERE key = 'model' FOR SHARE").fetchone()
        recorded = row[0] if row else ""
        if recorded != self.model:
            raise HeartMuLaError(f"the index at {self.location} now holds vectors of another HeartCLAP model "
                                 f"({recorded}, opened with {self.model or 'none recorded'}); open it again")

    # -- writes --
    def add(self, tracks: list[Track], vectors: np.ndarray) -> None:
        """Insert tracks, or replace the vector and metadata of paths already indexed."""
        if not tracks:
            return
        vectors = track_vectors(vectors, len(tracks), self.dim)
        rows = [(t.path, t.title, t.tags, t.duration, t.size, t.mtime, v) for t, v in zip(tracks, vectors)]
        with self.conn.transaction():
            self._check_recorded_model()
            self.conn.cursor().executemany(
                f"INSERT INTO {self.table} ({COLUMNS}, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (path) DO UPDATE SET title = excluded.title, tags = excluded.tags, "
                "duration = excluded.duration, size = excluded.size, mtime = excluded.mtime, "
                "embedding = excluded.embedding", rows)
        if not self.hnsw and not self.deferring_hnsw and len(self) >= HNSW_MIN_TRACKS:
            self.ensure_hnsw()

    @contextmanager
    def bulk_load(self):
        """Writes inside build the HNSW index once at the end, if the table then needs one and has none: one build
        over the whole table is much faster than growing the graph row by row (a table that already has the index
        keeps it up to date on every write as usual)."""
        self.deferring_hnsw = True
        try:
            yield self
        finally:
            self.deferring_hnsw = False
        if not self.hnsw and len(self) >= HNSW_MIN_TRACKS:
            self.ensure_hnsw()

    def ensure_hnsw(self) -> None:
        """Build the HNSW index (cosine) if the table has none; PostgreSQL keeps it up to date on later writes. The
        build gets enough maintenance_work_mem (up to HNSW_BUILD_MEMORY_MB) to hold the graph in memory."""
        with self.conn.transaction():
            current_kb = int(self.conn.execute("SELECT setting FROM pg_settings WHERE name = "
                                               "'maintenance_work_mem'").fetchone()[0])
            graph_kb = len(self) * (self.dim * 4 + HNSW_BYTES_PER_TRACK) * 13 // 10 // 1024
            wanted_kb = min(HNSW_BUILD_MEMORY_MB * 1024, graph_kb)
            if wanted_kb > current_kb:
                self.conn.execute(f"SET LOCAL maintenance_work_mem = '{wanted_kb}kB'")
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_embedding_hnsw ON {self.table} "
                              "USING hnsw (embedding vector_cosine_ops)")
        self.hnsw = True

    def has_hnsw(self) -> bool:
        return self.conn.execute("SELECT to_regclass(%s)", (f"{self.table}_embedding_hnsw",)).fetchone()[0] is not None

    def remove(self, paths: Iterable[str]) -> int:
        """Remove tracks by exact path or by folder; returns how many went."""
        gone = 0
        with self.conn.transaction():
            for path in paths:
                path = str(path)
                prefix = path.rstrip(os.sep) + os.sep
                # A range on the path key (byte order: COLLATE "C") finds a folder's tracks without a scan.
                upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
                gone += self.conn.execute(f"DELETE FROM {self.table} WHERE path = %s OR (path >= %s AND path < %s)",
                                          (path, prefix, upper)).rowcount
        return gone

    # -- reads --
    def __len__(self) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def tracks(self) -> Iterator[Track]:
        for row in self.conn.execute(f"SELECT {COLUMNS} FROM {self.table} ORDER BY path"):
            yield Track(*row)

    def get(self, path: str) -> Track | None:
        row = self.conn.execute(f"SELECT {COLUMNS} FROM {self.table} WHERE path = %s", (str(path),)).fetchone()
        return Track(*row) if row else None

    def vector(self, path: str) -> np.ndarray | None:
        row = self.conn.execute(f"SELECT embedding FROM {self.table} WHERE path = %s", (str(path),)).fetchone()
        return np.asarray(row[0].to_numpy(), dtype=np.float32) if row else None

    def pages(self, size: int = PAGE) -> Iterator[tuple[list[Track], np.ndarray]]:
        """(tracks, their vectors [n, dim]) a page at a time: every track once (for export), read through a
        server-side cursor so that the table never sits in memory whole."""
        with self.conn.transaction(), self.conn.cursor(name="heartmula_pages") as cursor:
            cursor.execute(f"SELECT {COLUMNS}, embedding FROM {self.table} ORDER BY path")
            while rows := cursor.fetchmany(size):
                vectors = np.stack([row[6].to_numpy() for row in rows]).astype(np.float32)
                yield [Track(*row[:6]) for row in rows], vectors

    def load(self) -> None:
        """Nothing to bring into memory: PostgreSQL serves the vectors."""

    def search(self, query: np.ndarray, k: int = 10, exclude: Iterable[str] = ()) -> list[Hit]:
        """The k tracks most similar to `query` (cosine), best first."""
        query = query_vector(query, self.dim)
        if k <= 0:
            return []
        excluded = {str(p) for p in exclude}
        # The excluded tracks are dropped after the query (a WHERE clause would make an HNSW scan return fewer).
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(self.ef_search, k + len(excluded)))}")
            if self.exact:
                self.conn.execute("SET LOCAL enable_indexscan = off")
            rows = self.conn.execute(f"SELECT {COLUMNS}, 1 - (embedding <=> %s) FROM {self.table} "
                                     "ORDER BY embedding <=> %s LIMIT %s",
                                     (query, query, k + len(excluded))).fetchall()
        return [Hit(float(row[6]), Track(*row[:6])) for row in rows if row[0] not in excluded][:k]

    def close(self) -> None:
        self.conn.close()


__all__ = ["DEFAULT_TABLE", "PgVectorIndex", "PostgresLocation", "connect", "is_postgres_location", "parse_location"]
