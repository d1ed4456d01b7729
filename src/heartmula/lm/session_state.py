"""A generation session as (tensors, JSON-able metadata) and back: pause, save, resume.

The saved state holds the filled part of the backbone's KV caches, every song's random-generator state and all
frames so far, so a resumed session continues exactly as the saved one would have.
"""

from __future__ import annotations

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.inference_state import InferenceState
from heartmula.lm.prompts import PromptRow
from heartmula.lm.requests import SongRequest
from heartmula.lm.samplers import SamplingParams


def session_state_dict(session) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a `heartmula.lm.generation.GenerationSession`."""
    tensors: dict[str, torch.Tensor] = {}
    rows = []
    for i, r in enumerate(session.rows):
        tensors[f"row.{i}.tokens"], tensors[f"row.{i}.mask"] = r.tokens, r.mask
        rows.append(dict(song=r.song, reference_slot=r.reference_slot, unconditional=r.unconditional,
                         weight=r.weight, tags=r.tags, without_lyrics=r.without_lyrics))
    songs = []
    for s, song in enumerate(session.songs):
        if song.reference_embedding is not None:
            tensors[f"song.{s}.reference"] = torch.as_tensor(song.reference_embedding, dtype=torch.float32)
        if song.audio_codes is not None:
            tensors[f"song.{s}.audio_codes"] = torch.as_tensor(song.audio_codes).long()
        if session.generators[s] is not None:
            tensors[f"song.{s}.rng"] = session.generators[s].get_state()
        songs.append(dict(lyrics=song.lyrics, seed=song.seed))
    tensors["lengths"], tensors["ended"] = session.lengths, session.ended
    if session.history:
        tensors["history"] = torch.stack(session.history)  # [frames, songs, K]
    meta = dict(songs=songs, rows=rows, sampling=dict(session.sampling.__dict__),
                max_new_frames=session.max_new_frames, compat=session.compat, guided=session.guided,
                frame_index=session.frame_index, min_new_frames=session.min_new_frames,
                lyrics_guided=session.lyrics_guided)
    if session.frame_index > 0:
        state = session._live_state()
        for i, cache in enumerate(state.backbone):
            tensors[f"kv.{i}.k"] = cache.k[:, :, : state.next_slot]
            tensors[f"kv.{i}.v"] = cache.v[:, :, : state.next_slot]
        tensors["next_positions"] = state.next_positions
        meta.update(next_slot=state.next_slot, pads=state.pads, capacity=state.capacity)
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta


def _songs_of(tensors: dict[str, torch.Tensor], meta: dict) -> list[SongRequest]:
    songs = []
    for s, info in enumerate(meta["songs"]):
        tags = [(r["tags"], r["weight"]) for r in meta["rows"]
                if r["song"] == s and not r["unconditional"] and not r.get("without_lyrics")]
        songs.append(SongRequest(lyrics=info["lyrics"], tags=tags, seed=info["seed"],
                                 reference_embedding=tensors.get(f"song.{s}.reference"),
                                 audio_codes=tensors.get(f"song.{s}.audio_codes")))
    return songs


def session_from_state(session_class, generator, tensors: dict[str, torch.Tensor], meta: dict):
    """A `session_class` (GenerationSession) continuing the saved one, on a generator with the same model."""
    session = session_class(generator, _songs_of(tensors, meta), SamplingParams(**meta["sampling"]),
                            meta["max_new_frames"], meta["compat"], meta["guided"], meta.get("min_new_frames", 0),
                            meta.get("lyrics_guided", False))
    session.rows = [PromptRow(r["song"], tensors[f"row.{i}.tokens"], tensors[f"row.{i}.mask"], r["reference_slot"],
                              r["unconditional"], r["weight"], r["tags"], r.get("without_lyrics", False))
                    for i, r in enumerate(meta["rows"])]
    session._rows_changed()
    device = session.device
    for s, g in enumerate(session.generators):
        if g is not None:
            g.set_state(tensors[f"song.{s}.rng"])
    session.lengths, session.ended = tensors["lengths"].to(device), tensors["ended"].to(device)
    session.frame_index = meta["frame_index"]
    if "history" in tensors:
        session.history = list(tensors["history"].to(device).unbind(0))
    if session.frame_index > 0:
        session.state = _restored_state(generator.model, tensors, meta, len(session.rows))
    return session


def _restored_state(model, tensors: dict[str, torch.Tensor], meta: dict, rows: int) -> InferenceState:
    filled = meta["next_slot"]
    if tensors["kv.0.k"].shape[0] != rows or len(model.backbone.layers) * 2 != sum(
        k.startswith("kv.") for k in tensors
    ):
        raise HeartMuLaError("this saved state belongs to a different model")
    state = InferenceState.allocate(model, list(meta["pads"]), meta["capacity"], filled,
                                    tensors["next_positions"].to(model.device))
    for i, cache in enumerate(state.backbone):
        for name in ("k", "v"):
            saved = tensors[f"kv.{i}.{name}"]
            target = getattr(cache, name)
            if saved.shape[1:2] + saved.shape[3:] != target.shape[1:2] + target.shape[3:]:
                raise HeartMuLaError("this saved state belongs to a model with different attention sizes")
            target[:, :, :filled] = saved.to(model.device, model.dtype)
    return state
