"""A stream session as safetensors bytes and back: the LM session's state, the codec decoder's, the audio not yet
emitted, the controls and their schedule."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import GenerationSession
from heartmula.stream.controls import StreamControls, parse_prompts

STATE_FORMAT = "heartmula.stream/1"


def _fingerprint(generator, codec) -> dict:
    c = generator.model.config
    return dict(lm=[c.backbone.num_layers, c.backbone.embed_dim, c.decoder.num_layers, c.audio_vocab_size],
                codec=[codec.config.sample_rate, codec.config.codebook_size, codec.config.decoder_type])


def stream_state_bytes(session, lm_tensors: dict, lm_meta: dict) -> bytes:
    """`heartmula.stream.StreamSession.save_state`'s bytes, given the LM session's state (taken under the model
    lock)."""
    from safetensors.torch import save

    audio_tensors, audio_meta = session.decoder.state()
    tensors = {f"lm.{k}": v for k, v in lm_tensors.items()}
    tensors.update({f"audio.{k}": v.detach().cpu().contiguous() for k, v in audio_tensors.items()})
    tensors["pending"] = torch.from_numpy(np.ascontiguousarray(session._pending))
    if session._unpushed:
        tensors["unpushed"] = torch.stack(session._unpushed, dim=1)
    meta = dict(
        format=STATE_FORMAT, model=_fingerprint(session.generator, session.codec), lm=lm_meta, audio=audio_meta,
        lyrics=session.lyrics, seed=session.seed, max_seconds=session.max_seconds, chunk_frames=session.chunk_frames,
        controls=session.controls.to_dict(), controls_version=session.controls_version,
        frame_versions=session.frame_versions, applied_at=list(session.applied_at.items()),
        schedule=[[f, _jsonable(c)] for f, c in session.schedule_changes], skip=session._skip,
        emitted_frames=session.emitted_frames, played_prompt_frames=session.played_prompt_frames,
        lm_done=session.lm_done, finished=session.finished,
        degradations=session.degradations,
    )
    return save(tensors, metadata={"heartmula.stream": json.dumps(meta)})


def resumed_stream(session_class, generator, codec, state: bytes | str | os.PathLike):
    """A `session_class` (StreamSession) restored from `stream_state_bytes` output (bytes or a file)."""
    from safetensors.torch import load

    if not isinstance(state, (bytes, bytearray)):
        try:
            state = Path(state).read_bytes()
        except OSError as exc:
            raise HeartMuLaError(f"cannot read the stream state {state}: {exc.strerror}") from None
    meta = _read_metadata(bytes(state))
    if meta.get("format") != STATE_FORMAT:
        raise HeartMuLaError("this is not a saved heartmula stream state (or a newer format)")
    if meta["model"] != _fingerprint(generator, codec):
        raise HeartMuLaError("this stream state was saved with a different language model or codec: resume it "
                             "with the same --model and --codec")
    tensors = load(bytes(state))
    audio = meta["audio"]
    session = session_class(generator, codec, meta["lyrics"], StreamControls.from_dict(meta["controls"]),
                            meta["seed"], meta["max_seconds"], chunk_frames=meta["chunk_frames"],
                            lookahead_frames=audio.get("lookahead_frames"),
                            overlap_frames=audio.get("overlap_frames", 12))
    lm_tensors = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
    session.lm = GenerationSession.from_state(generator, lm_tensors, meta["lm"])
    session.decoder.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("audio.")}, audio)
    session._pending = tensors["pending"].numpy().copy()
    session._unpushed = list(tensors["unpushed"].unbind(1)) if "unpushed" in tensors else []
    session.controls_version = session._lm_version = meta["controls_version"]
    session.frame_versions = list(meta["frame_versions"])
    session.applied_at = {int(v): int(f) for v, f in meta["applied_at"]}
    session.schedule_changes = [(int(f), _from_jsonable(c)) for f, c in meta["schedule"]]
    session._skip, session.emitted_frames = meta["skip"], meta["emitted_frames"]
    session.played_prompt_frames = meta.get("played_prompt_frames", 0)
    session.lm_done, session.finished = meta["lm_done"], meta["finished"]
    session.degradations = list(meta["degradations"])
    return session


def _jsonable(changes: dict) -> dict:
    return {k: [list(p) for p in v] if k == "prompts" else v for k, v in changes.items()}


def _from_jsonable(changes: dict) -> dict:
    return {k: parse_prompts(v) if k == "prompts" else v for k, v in changes.items()}


def _read_metadata(data: bytes) -> dict:
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        return json.loads(header["__metadata__"]["heartmula.stream"])
    except (struct.error, ValueError, KeyError, TypeError):
        raise HeartMuLaError("this is not a saved heartmula stream state") from None
