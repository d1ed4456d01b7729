"""StreamSession: chunks vs one-shot generation, live controls, state round trips, validation, audio prompts."""

import math

import numpy as np
import pytest

from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import SongRequest, frames_for_duration
from heartmula.stream import StreamControls, StreamSession

LYRICS = "[verse]\nhello little star\n[chorus]\nshine on me"
CONTROLS = StreamControls(prompts=[("jazz,piano", 0.7), ("electronic", 0.3)], top_k=10, cfg_scale=1.5)
FLOW = dict(chunk_frames=4, overlap_frames=3, codec_steps=2)  # keeps the flow-matching tests fast


def session_for(generator, codecs, preset, seconds=2.0, **kwargs):
    options = dict(FLOW) if preset == "tiny" else {}
    options.update(kwargs)
    controls = options.pop("controls", CONTROLS)
    return StreamSession(generator, codecs[preset], LYRICS, controls, seed=7, max_seconds=seconds, **options)


def concat(chunks):
    return np.concatenate([c.audio for c in chunks], axis=1)


@pytest.mark.parametrize("preset", ["tiny-direct", "tiny", "tiny-lookahead"])
def test_chunks_concatenate_to_one_shot_generation(generator, codecs, preset):
    session = session_for(generator, codecs, preset)
    chunks = list(session)
    assert len(chunks) > 3 and chunks[-1].final and session.next_chunk() is None
    assert [c.first_frame for c in chunks] == list(np.cumsum([0] + [c.frames for c in chunks[:-1]]))
    song = SongRequest(LYRICS, list(CONTROLS.prompts), seed=7)
    codes = generator.generate([song], CONTROLS.sampling(), frames_for_duration(2.0))[0].numpy()
    np.testing.assert_array_equal(session.codes(), codes)
    codec = codecs[preset]
    options = {} if preset != "tiny" else dict(window_frames=7, overlap_frames=3, steps=2, seed=7)
    expected, rate = codec.decode(codes, **options)
    audio = concat(chunks)
    assert chunks[0].sample_rate == rate and audio.dtype == np.float32
    assert audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-direct", "tiny-lookahead"])
def test_control_change_applies_to_the_next_frame(generator, codecs, preset):
    plain = session_for(generator, codecs, preset, seconds=2.0)
    plain_chunks = list(plain)
    session = session_for(generator, codecs, preset, seconds=2.0)
    head = [session.next_chunk() for _ in range(3)]
    at = session.frames_generated
    version = session.update(prompts=[("jazz,piano", 0.1), ("metal,guitar", 0.9)], cfg_scale=4.0, temperature=0.0)
    assert version == 1
    rest, generated = [], []  # chunks, and frames generated when each was handed out
    while (chunk := session.next_chunk()) is not None:
        rest.append(chunk)
        generated.append(session.frames_generated)
    assert session.applied_at[1] == at  # the very next frame
    codes, plain_codes = session.codes(), plain.codes()
    np.testing.assert_array_equal(codes[:, :at], plain_codes[:, :at])
    assert (codes[:, at] != plain_codes[:, at]).any()  # audible from that frame, not later
    # the first chunk holding audio generated under the change arrives within the promised number of frames
    index = next(i for i, c in enumerate(rest) if 1 in c.frame_versions)
    first = rest[index]
    assert first.first_frame <= at < first.first_frame + first.frames
    assert generated[index] - at <= session.latency_frames
    if preset == "tiny-lookahead":  # one code frame of decoder look-ahead + the SQ decoder's one
        assert session.decoder.latency_frames == 2
    assert first.frame_versions[at - first.first_frame] == 1 and first.controls_version == 1
    assert all(c.controls_version == 0 for c in head)
    np.testing.assert_array_equal(concat(head), concat(plain_chunks)[:, : concat(head).shape[1]])


def test_schedule_equals_a_live_update_at_the_same_frame(generator, codecs):
    live = session_for(generator, codecs, "tiny-direct")
    chunks = [live.next_chunk() for _ in range(2)]
    frame = live.frames_generated
    live.update(temperature=0.5, prompts=[("electronic", 1.0)])
    chunks += list(live)
    scripted = session_for(generator, codecs, "tiny-direct")
    scripted.schedule(frame, temperature=0.5, prompts="electronic")
    np.testing.assert_array_equal(concat(list(scripted)), concat(chunks))
    assert scripted.applied_at[1] == frame


@pytest.mark.parametrize("preset", ["tiny-direct", "tiny", "tiny-lookahead"])
def test_save_and_resume_continue_identically(generator, codecs, preset, tmp_path):
    session = session_for(generator, codecs, preset, seconds=3.0)
    for _ in range(3):
        session.next_chunk()
    session.update(prompts=[("jazz,piano", 0.5), ("rock", 0.5)], top_k=5)  # a prompt added, one removed
    session.next_chunk()
    state = session.save_state(tmp_path / "state.safetensors")
    rest = list(session)
    codes = session.codes()
    session.close()
    for saved in (state, tmp_path / "state.safetensors"):
        resumed = StreamSession.resume(generator, codecs[preset], saved)
        assert resumed.controls.prompts == (("jazz,piano", 0.5), ("rock", 0.5))
        again = list(resumed)
        assert len(again) >= 3
        assert [c.first_frame for c in again] == [c.first_frame for c in rest]
        np.testing.assert_array_equal(concat(again), concat(rest))
        np.testing.assert_array_equal(resumed.codes(), codes)
        resumed.close()


def test_resume_rejects_other_models_and_garbage(generator, codecs):
    session = session_for(generator, codecs, "tiny-direct")
    session.next_chunk()
    state = session.save_state()
    with pytest.raises(HeartMuLaError, match="different language model or codec"):
        StreamSession.resume(generator, codecs["tiny"], state)
    with pytest.raises(HeartMuLaError, match="not a saved heartmula stream state"):
        StreamSession.resume(generator, codecs["tiny-direct"], b"not a state at all")


BAD_CONTROLS = [
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_k=2.5), "top_k must be an integer >= 1"),
    (dict(cfg_scale="high"), "cfg_scale must be a finite number"),
    (dict(prompts=[("jazz", -1.0)]), "finite and >= 0"),
    (dict(prompts=[("jazz", 0.0), ("pop", 0.0)]), "must not all be 0"),
    (dict(prompts=[]), "at least one tag prompt"),
    (dict(prompts=[("jazz", 1.0), ("jazz", 2.0)]), "appears twice"),
    (dict(prompts="jazz:lots"), "cannot read the weight"),
    (dict(prompts=[("x" * 5000, 1.0)]), "too long for the model's context"),
    (dict(volume=11), "unknown control"),
]


def test_bad_controls_are_rejected_and_the_session_keeps_running(generator, codecs):
    reference = concat(list(session_for(generator, codecs, "tiny-direct", seconds=1.5)))
    session = session_for(generator, codecs, "tiny-direct", seconds=1.5)
    chunks = []
    for changes, message in BAD_CONTROLS:
        chunk = session.next_chunk()
        if chunk is not None:
            chunks.append(chunk)
        with pytest.raises(HeartMuLaError, match=message):
            session.update(**changes)
        assert session.controls == CONTROLS and session.controls_version == 0
    chunks += list(session)
    np.testing.assert_array_equal(concat(chunks), reference)
    with pytest.raises(HeartMuLaError, match="has already been generated"):
        session.schedule(0, temperature=0.5)
    with pytest.raises(HeartMuLaError, match="top_k"):
        session.schedule(1000, top_k=-3)


def test_audio_prompt_continues_the_users_audio(generator, codecs):
    codec = codecs["tiny-direct"]
    greedy = CONTROLS.replace(top_k=1)
    full = session_for(generator, codecs, "tiny-direct", seconds=2.0, controls=greedy)
    list(full)
    codes = full.codes()
    continued = session_for(generator, codecs, "tiny-direct", seconds=2.0, controls=greedy, prompt_codes=codes[:, :10])
    chunks = list(continued)
    assert chunks[0].first_frame == 0
    np.testing.assert_array_equal(continued.codes(), codes[:, 10:][:, : continued.frames_generated])
    assert concat(chunks).shape[1] == continued.frames_generated * codec.config.samples_per_code
    # from audio: encoded by the codec (this one has an encoder), then continued
    audio, rate = codec.decode(codes[:, :10])
    from_audio = session_for(generator, codecs, "tiny-direct", seconds=1.0, prompt_audio=(audio, rate))
    assert from_audio.lm.songs[0].audio_codes.shape == (8, 10)
    assert len(list(from_audio)) > 0
    with pytest.raises(HeartMuLaError, match="no trained encoder"):
        session_for(generator, codecs, "tiny", prompt_audio=(audio, rate))


def test_mismatched_codec_is_refused(generator, tmp_path):
    from heartmula.codec import load_codec
    from heartmula.codec.config import tiny_config
    from heartmula.codec.model import HeartCodec

    config = tiny_config("direct")
    config.codebook_size = 16  # the tiny LM makes codes up to 31
    HeartCodec(config.validate()).init_weights(0).save_pretrained(tmp_path)
    with pytest.raises(HeartMuLaError, match="cannot decode"):
        StreamSession(generator, load_codec(tmp_path), LYRICS, CONTROLS)


def test_updates_from_another_thread_replay_exactly_as_scheduled_changes(generator, codecs):
    import threading

    changes = [dict(temperature=0.5), dict(prompts=[("electronic", 1.0)]), dict(top_k=3, cfg_scale=2.0)]
    session = session_for(generator, codecs, "tiny-direct", seconds=2.0)
    chunks, started = [], threading.Event()

    def consume():
        for chunk in session:
            chunks.append(chunk)
            started.set()

    thread = threading.Thread(target=consume)
    thread.start()
    started.wait()
    for change in changes:  # lands between two frames, wherever the producer is
        session.update(**change)
    thread.join()
    versions = [v for c in chunks for v in c.frame_versions]
    assert versions == sorted(versions)
    replay = session_for(generator, codecs, "tiny-direct", seconds=2.0)
    for version, change in enumerate(changes, 1):
        if version in session.applied_at:
            replay.schedule(session.applied_at[version], **change)
    np.testing.assert_array_equal(concat(list(replay)), concat(chunks))


def test_reference_audio_goes_through_clap_into_the_reference_slot(generator, codecs):
    from dataclasses import replace

    from heartmula.clap import HeartCLAP, HeartCLAPConfig

    clap = HeartCLAP(replace(HeartCLAPConfig.tiny(), embed_dim=512)).eval()
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 16000)).astype(np.float32)
    styled = session_for(generator, codecs, "tiny-direct", seconds=1.0, reference_audio=(audio, 16000), clap=clap)
    reference = styled.lm.songs[0].reference_embedding
    np.testing.assert_allclose(reference.numpy(), clap.embed_audio(audio, 16000), atol=1e-6)
    list(styled)
    plain = session_for(generator, codecs, "tiny-direct", seconds=1.0)
    list(plain)
    assert not np.array_equal(styled.codes(), plain.codes()[:, : styled.frames_generated])
    with pytest.raises(HeartMuLaError, match="embeds audio in 32 dimensions"):
        session_for(generator, codecs, "tiny-direct", reference_audio=(audio, 16000),
                    clap=HeartCLAP(HeartCLAPConfig.tiny()))
