"""What a library index holds and returns, in every backend (heartmula.clap.index, .qdrant_index, .pgvector_index)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heartmula.errors import HeartMuLaError

FORMAT_VERSION = "heartclap-index-1"


@dataclass
class Track:
    path: str
    title: str = ""
    tags: str = ""
    duration: float | None = None
    size: int | None = None
    mtime: float | None = None
    row: int | None = None


@dataclass
class Hit:
    score: float
    track: Track


def track_vectors(vectors, tracks: int, dim: int) -> np.ndarray:
    """The vectors of `tracks` tracks as a float32 [tracks, dim] matrix (HeartMuLaError for another dimension)."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(tracks, -1)
    if vectors.shape[1] != dim:
        raise HeartMuLaError(f"vectors are {vectors.shape[1]}-d, the index holds {dim}-d")
    return vectors


def query_vector(query, dim: int) -> np.ndarray:
    """A search query as a flat float32 vector of the index's dimension (HeartMuLaError for another one)."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != dim:
        raise HeartMuLaError(f"query is {query.shape[0]}-d, the index holds {dim}-d vectors")
    return query


def open_meta(read_meta, create_meta, close, location: str, dim: int | None, model: str | None, create: bool,
              container: str) -> tuple[int, str]:
    """(dim, model) of a database index's metadata: `read_meta()` (a dict, None when there is no index), made by
    `create_meta(dim, model)` when missing and `create`. HeartMuLaError, after `close()`, for a missing index, another
    format or another dimension; `container` names what holds the vectors (table, collection) in that message."""
    meta = read_meta()
    try:
        if meta is None:
            if not create or dim is None:
                raise HeartMuLaError(f"no index at {location}; create one with `heartmula index add MUSIC --index "
                                     f"'{location}'`")
            meta = create_meta(dim, model or "")
        if meta.get("format") != FORMAT_VERSION:
            raise HeartMuLaError(f"{location} is not a {FORMAT_VERSION} index")
        if dim is not None and dim != int(meta["dim"]):
            raise HeartMuLaError(f"the index at {location} holds {meta['dim']}-d vectors, the model makes {dim}-d; "
                                 f"use another {container} or the model it was built with")
    except HeartMuLaError:
        close()
        raise
    return int(meta["dim"]), meta.get("model", "")


def refuse_other_model(location, recorded: str, model: str, advice: str) -> None:
    """HeartMuLaError when an index built with HeartCLAP model `recorded` meets vectors or queries of `model` (an
    empty name matches any); `advice` says what to do instead."""
    if recorded and model and recorded != model:
        raise HeartMuLaError(f"the index at {location} was built with another HeartCLAP model ({recorded}, this one "
                             f"is {model}); {advice}")
