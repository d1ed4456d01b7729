"""The music library index in Qdrant: the same operations as the folder index (heartmula.clap.index.ClapIndex), for
libraries that outgrow one machine or that a team shares.

Locations (what `--index` takes):
    qdrant://HOST[:PORT]/COLLECTION    a Qdrant server over HTTP (port 6333 by default; the API key, if the server
                                       wants one, from the environment variable QDRANT_API_KEY)
    qdrants://HOST[:PORT]/COLLECTION   the same over HTTPS
    qdrant-local:FOLDER[#COLLECTION]   qdrant-client's embedded local mode, storage in FOLDER (no server; exact
                                       search by a full scan; for tests and small libraries). FOLDER ":memory:"
                                       keeps the points in this process only.

A track is one point: its id is a UUID made from the track's path, its vector the HeartCLAP embedding (dot product:
the embeddings are normalised, so scores equal the folder index's cosines), its payload the track's metadata, its
folders (so that removing a folder is one filtered delete) and the model fingerprint. The collection's format,
dimension and model fingerprint live in a companion collection `<COLLECTION>-meta`; a library built with one
HeartCLAP model refuses vectors and queries of another, and searches on a server also filter on the model, so
vectors of two models never mix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import PurePath
from urllib.parse import urlparse

import numpy as np

from heartmula.clap.tracks import FORMAT_VERSION, Hit, Track, open_meta, query_vector, refuse_other_model, track_vectors
from heartmula.errors import HeartMuLaError
from heartmula.extras import optional_import

DEFAULT_COLLECTION = "heartmula"
DEFAULT_PORT = 6333
TIMEOUT_SECONDS = 10  # every request to a server; an unreachable one fails after this
PAGE = 1024  # points per scroll page and per upsert
PAYLOAD_FIELDS = ("title", "tags", "duration", "size", "mtime")


def is_qdrant_location(location: str | os.PathLike) -> bool:
    return str(location).startswith(("qdrant://", "qdrants://", "qdrant-local:"))


def point_id(path: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"heartmula-track:{path}"))


def folders_of(path: str) -> list[str]:
    """Every folder that holds `path` ("/a/b/c.wav" -> ["/a", "/a/b"]), for removing a folder's tracks."""
    parents = [str(p) for p in PurePath(path).parents]
    return [p for p in parents if p not in ("", ".", "/", os.sep)]


def connect(location: str):
    """(QdrantClient, collection name) for a location; a server that does not answer within TIMEOUT_SECONDS
    raises a HeartMuLaError."""
    qdrant_client = optional_import("qdrant_client", "scale", "a Qdrant library index")
    if location.startswith("qdrant-local:"):
        folder, _, collection = location[len("qdrant-local:"):].partition("#")
        if not folder:
            raise HeartMuLaError("qdrant-local: needs a folder (or :memory:), e.g. qdrant-local:library-qdrant")
        client = (qdrant_client.QdrantClient(location=":memory:") if folder == ":memory:"
                  else qdrant_client.QdrantClient(path=folder))
        return client, collection or DEFAULT_COLLECTION
    parsed = urlparse(location)
    collection = parsed.path.strip("/")
    if not parsed.hostname or not collection or "/" in collection:
        raise HeartMuLaError(f"{location}: a Qdrant index is qdrant://HOST[:PORT]/COLLECTION")
    scheme = "https" if parsed.scheme == "qdrants" else "http"
    client = qdrant_client.QdrantClient(url=f"{scheme}://{parsed.hostname}:{parsed.port or DEFAULT_PORT}",
                                        api_key=os.environ.get("QDRANT_API_KEY"), timeout=TIMEOUT_SECONDS,
                                        check_compatibility=False)
    try:
        client.get_collections()
    except Exception as exc:  # the client raises transport errors of several libraries (httpx, grpc, its own)
        client.close()
        address = f"{scheme}://{parsed.hostname}:{parsed.port or DEFAULT_PORT}"
        raise HeartMuLaError(f"no Qdrant server answers at {address} within {TIMEOUT_SECONDS} s "
                             f"({type(exc).__name__})") from None
    return client, collection


class QdrantIndex:
    """A library index in a Qdrant collection (created with `dim` when missing and `create`)."""

    def __init__(self, location: str, dim: int | None = None, model: str | None = None, create: bool = True):
        self.location = location
        self.local = location.startswith("qdrant-local:")
        self.client, self.collection = connect(location)  # names the 'scale' extra when qdrant-client is missing
        from qdrant_client import models

        self.models = models
        self.meta_collection = f"{self.collection}-meta"
        self.dim, self.model = open_meta(self._read_meta, self._create, self.client.close, location, dim, model,
                                         create, "collection")

    def _read_meta(self) -> dict | None:
        if not self.client.collection_exists(self.meta_collection):
            return None
        points = self.client.retrieve(self.meta_collection, [0], with_payload=True)
        return dict(points[0].payload) if points else None

    def _write_meta(self, meta: dict) -> None:
        self.client.upsert(self.meta_collection, [self.models.PointStruct(id=0, vector=[1.0], payload=meta)])

    def _create(self, dim: int, model: str) -> dict:
        models = self.models
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(self.collection, vectors_config=models.VectorParams(
                size=dim, distance=models.Distance.DOT))
            for field in () if self.local else ("path", "folders", "model"):
                self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        self.client.create_collection(self.meta_collection, vectors_config=models.VectorParams(
            size=1, distance=models.Distance.DOT))
        meta = {"format": FORMAT_VERSION, "dim": dim, "model": model}
        self._write_meta(meta)
        return meta

    # -- the model --
    def set_model(self, model: str) -> None:
        """Record `model` as the one whose vectors the collection holds (after indexing everything with it)."""
        self._write_meta({"format": FORMAT_VERSION, "dim": self.dim, "model": model})
        self.client.set_payload(self.collection, {"model": model}, wait=True,
                                points=self.models.FilterSelector(filter=self.models.Filter()))
        self.model = model

    def check_model(self, model: str) -> None:
        refuse_other_model(self.location, self.model, model, "use the --model it was built with, or a new "
                           "collection")

    def _model_filter(self):
        models = self.models
        return [models.FieldCondition(key="model", match=models.MatchValue(value=self.model))]

    # -- writes --
    def add(self, tracks: list[Track], vectors: np.ndarray) -> None:
        """Insert tracks, or replace the vector and metadata of paths already indexed."""
        if not tracks:
            return
        vectors = track_vectors(vectors, len(tracks), self.dim)
        points = [self.models.PointStruct(id=point_id(t.path), vector=v.tolist(), payload={
            "path": t.path, "folders": folders_of(t.path), "model": self.model,
            **{name: getattr(t, name) for name in PAYLOAD_FIELDS}}) for t, v in zip(tracks, vectors)]
        for start in range(0, len(points), PAGE):
            self.client.upsert(self.collection, points[start : start + PAGE], wait=True)

    def remove(self, paths: Iterable[str]) -> int:
        """Remove tracks by exact path or by folder; returns how many went."""
        models = self.models
        gone = 0
        for path in paths:
            path = str(path).rstrip(os.sep) or str(path)
            match = models.Filter(should=[models.FieldCondition(key="path", match=models.MatchValue(value=path)),
                                          models.FieldCondition(key="folders", match=models.MatchValue(value=path))])
            count = self.client.count(self.collection, count_filter=match, exact=True).count
            if count:
                self.client.delete(self.collection, points_selector=models.FilterSelector(filter=match), wait=True)
            gone += count
        return gone

    # -- reads --
    def __len__(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def _track(self, payload: dict) -> Track:
        return Track(payload["path"], *(payload.get(name) for name in PAYLOAD_FIELDS))

    def points(self, with_vectors: bool = False) -> Iterator:
        """Every point, page by page."""
        offset = None
        while True:
            page, offset = self.client.scroll(self.collection, limit=PAGE, offset=offset, with_payload=True,
                                              with_vectors=with_vectors)
            yield from page
            if offset is None:
                return

    def pages(self, size: int = PAGE) -> Iterator[tuple[list[Track], np.ndarray]]:
        """(tracks, their vectors [n, dim]) a page at a time: every track once (for export)."""
        page: list = []
        for point in self.points(with_vectors=True):
            page.append(point)
            if len(page) == size:
                yield [self._track(p.payload) for p in page], np.asarray([p.vector for p in page], np.float32)
                page = []
        if page:
            yield [self._track(p.payload) for p in page], np.asarray([p.vector for p in page], np.float32)

    def tracks(self) -> Iterator[Track]:
        yield from sorted((self._track(p.payload) for p in self.points()), key=lambda t: t.path)

    def get(self, path: str) -> Track | None:
        found = self.client.retrieve(self.collection, [point_id(str(path))], with_payload=True)
        return self._track(found[0].payload) if found else None

    def vector(self, path: str) -> np.ndarray | None:
        found = self.client.retrieve(self.collection, [point_id(str(path))], with_vectors=True)
        return np.asarray(found[0].vector, dtype=np.float32) if found else None

    def load(self) -> None:
        """Nothing to bring into memory: Qdrant serves the vectors."""

    def search(self, query: np.ndarray, k: int = 10, exclude: Iterable[str] = ()) -> list[Hit]:
        """The k tracks most similar to `query` (dot product of normalised embeddings), best first."""
        query = query_vector(query, self.dim)
        if k <= 0:
            return []
        models = self.models
        must_not = [models.HasIdCondition(has_id=[point_id(str(p)) for p in exclude])] if exclude else []
        # Servers filter on the indexed model field for free; local mode would test every point in Python, and
        # there the collection's recorded model (checked on open and on every add) already keeps models apart.
        must = [] if self.local else self._model_filter()
        query_filter = models.Filter(must=must, must_not=must_not) if must or must_not else None
        found = self.client.query_points(self.collection, query=query.tolist(), limit=k, with_payload=True,
                                         query_filter=query_filter)
        return [Hit(float(p.score), self._track(p.payload)) for p in found.points]

    def close(self) -> None:
        self.client.close()


__all__ = ["DEFAULT_COLLECTION", "QdrantIndex", "connect", "folders_of", "is_qdrant_location", "point_id"]
