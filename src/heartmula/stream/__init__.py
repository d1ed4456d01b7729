"""Real-time streaming: songs with vocals generated frame by frame, decoded chunk by chunk, steerable while they play.

    from heartmula.stream import StreamSession, StreamControls, AudioChunk, Pacer

    controls = StreamControls(prompts=[("jazz,piano", 0.7), ("electronic", 0.3)], temperature=1.0, top_k=50,
                              cfg_scale=1.5)
    session = StreamSession(generator, codec, lyrics="[verse]\\n...", controls=controls, seed=7, max_seconds=60.0)
    chunk = session.next_chunk()     # AudioChunk, or None once the song has ended
    for chunk in session: ...        # chunk.audio float32 [channels, samples], .sample_rate, .first_frame, .frames,
                                     # .controls_version, .frame_versions, .final
    session.update(temperature=0.8, prompts=[("jazz,piano", 0.2), ("electronic", 0.8)])
    session.schedule(frame=100, cfg_scale=2.0)     # scripted change, applied right before frame 100
    state = session.save_state()     # bytes (safetensors: tensors + JSON metadata; no pickle); path= writes a file
    session = StreamSession.resume(generator, codec, state)
    session.close()

`generator` is a `heartmula.lm.generation.HeartMuLaGenerator` (`heartmula.lm.pretrained.load_generator`), `codec`
a `heartmula.codec.HeartCodec` (`heartmula.codec.load_codec`) whose codebooks cover the LM's codes.

Controls (`StreamControls`, immutable and validated): `prompts` a list of (tags, weight) pairs, a {tags: weight}
dict or the CLI's "jazz:0.7,electronic:0.3" string (weights relative, >= 0, not all 0; tags unique);
`temperature` >= 0; `top_k` integer >= 1; `cfg_scale` >= 0. `update(**changes)` validates first: a bad value
raises `HeartMuLaError` with a message saying what is allowed, and the session stays unchanged and running. A
valid update returns the new controls version at once (it never waits for the frame in progress) and applies
from the next frame generated; several updates between two frames collapse into the newest. Prompts are
addressed by their tags: a new tags string adds a prompt mid-song (its row is computed once over the prompt and
every frame so far), a missing one removes it (its row leaves the batch).
Audio reflects a change once the codec has decoded the frame:
`session.latency_frames` is the promised bound in frames (80 ms each) from the update to the first chunk holding
audio generated under it; `session.applied_at[version]` is the first frame generated under a version, and every
chunk lists the version of each of its frames.

Chunks: `chunk_frames` frames (default 2 = 160 ms with a direct-decoder codec; 12 with a flow-matching codec,
whose windows also share `overlap_frames` with the previous one). Chunks always hold whole frames and concatenate
to the song; with no control changes they equal one-shot generation + decoding with the same seed (exactly for
the flow-matching codec given the same window sizes; to float rounding for the direct decoder, whose look-ahead
`lookahead_frames` defaults to its full receptive field; shorter is lower latency but no longer exact).

Audio prompts: `prompt_audio=(audio, rate)` (encoded by the codec; needs a codec with an encoder) or
`prompt_codes=[K, T]` continue from the user's audio: its codes follow the text prompt in the LM context, and its
last frames prime the codec decoder (they are not played again). Style reference: `reference_audio=(audio, rate)`
is embedded by HeartCLAP (`clap=` a loaded model, default the shipped one) into the LM's reference-audio slot, or
pass `reference_embedding=` directly. It conditions the whole song; it is not a live control (changing it would
mean re-reading the song so far through every row).

State: `save_state` holds the LM's KV caches (filled part), the random-generator states, every frame so far, the
codec decoder's state and the not yet emitted audio, so `resume` continues exactly as the saved session would
have (exact for seeded sessions). Sessions sharing one model take turns frame by frame (`model_lock`).

`Pacer` (heartmula.stream.pacer) runs a session in a producer thread a small buffer ahead of a real-time consumer,
counts underruns and degrades gracefully; `read_control_script` reads scripted control files (time -> change).
"""

from heartmula.stream.controls import ControlChange, StreamControls, read_control_script
from heartmula.stream.pacer import Pacer, PacerStats
from heartmula.stream.session import AudioChunk, StreamSession, model_lock

__all__ = [
    "AudioChunk",
    "ControlChange",
    "Pacer",
    "PacerStats",
    "StreamControls",
    "StreamSession",
    "model_lock",
    "read_control_script",
]
