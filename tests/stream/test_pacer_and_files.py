"""Pacer (buffering, underruns, graceful degradation), scripted control files, the live WAV writer."""

import threading
import time

import numpy as np
import pytest
import soundfile as sf

from heartmula.audio import LiveWavWriter
from heartmula.errors import HeartMuLaError
from heartmula.stream import AudioChunk, ControlChange, Pacer, read_control_script


class FakeSession:
    """Hands out the chunks the test releases, one per `release()`; None after `end()`."""

    sample_rate, channels = 100, 2
    controls_version = 0  # newest accepted controls (bumped by the tests)

    def __init__(self, delay: float = 0.0):
        self.queue: list = []
        self.available = threading.Semaphore(0)
        self.delay = delay
        self.degraded = 0
        self.frame = 0

    def release(self, samples: int, value: float = 1.0, version: int = 0) -> None:
        audio = np.full((2, samples), value, dtype=np.float32)
        self.queue.append(AudioChunk(audio, self.sample_rate, self.frame, 1, version, (version,)))
        self.frame += 1
        self.available.release()

    def end(self) -> None:
        self.queue.append(None)
        self.available.release()

    def next_chunk(self):
        self.available.acquire()
        time.sleep(self.delay)
        return self.queue.pop(0)

    def degrade(self):
        self.degraded += 1
        return f"cheaper {self.degraded}" if self.degraded <= 2 else None


def wait_for(condition, what):
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_pacer_counts_underruns_grows_the_buffer_and_rebuffers():
    session = FakeSession()
    pacer = Pacer(session, lookahead_seconds=0.1, max_lookahead_seconds=0.3).start()
    assert not pacer.read(5).any() and pacer.stats.underruns == 0  # start-up silence is not an underrun
    session.release(20, 0.5)
    assert pacer.wait_ready(timeout=30)
    np.testing.assert_array_equal(pacer.read(15), np.full((2, 15), 0.5, dtype=np.float32))
    out = pacer.read(10)  # 5 samples left: an underrun
    assert out[:, :5].tolist() == [[0.5] * 5] * 2 and not out[:, 5:].any()
    assert pacer.stats.underruns == 1 and pacer.lookahead == pytest.approx(0.2)
    session.release(10, 0.25)
    wait_for(lambda: pacer.buffered_seconds >= 0.1, "the chunk")
    assert not pacer.read(5).any()  # rebuffering: 10 samples are below the grown look-ahead of 20
    assert pacer.stats.underruns == 1 and pacer.stats.underrun_seconds == pytest.approx(0.1)
    session.release(10, 0.75)
    wait_for(lambda: pacer.buffered_seconds >= 0.2, "the chunk")
    audio = pacer.read(20)
    assert audio[0].tolist() == [0.25] * 10 + [0.75] * 10
    session.end()
    wait_for(lambda: pacer.done, "the end")
    assert not pacer.read(10).any() and pacer.stats.underruns == 1  # after the end: silence, not an underrun
    stats = pacer.stop()
    assert stats.chunks == 3 and stats.produced_seconds == pytest.approx(0.4)
    assert stats.played_seconds == pytest.approx(0.4) and stats.time_to_first_audio is not None


def pacer_with_a_full_buffer() -> tuple[FakeSession, Pacer]:
    """Four 10-sample chunks offered to a pacer whose look-ahead (10 samples) is then full."""
    session = FakeSession()
    pacer = Pacer(session, lookahead_seconds=0.1).start()
    for i in range(4):
        session.release(10, float(i))
    wait_for(lambda: pacer.buffered_seconds >= 0.1, "the look-ahead")
    return session, pacer


def test_pacer_delivers_every_sample_in_order_and_stops_at_the_look_ahead():
    session, pacer = pacer_with_a_full_buffer()
    assert len(session.queue) == 3  # the producer waits once the look-ahead (10 samples) is buffered
    session.end()
    got = []
    while not pacer.done:
        wait_for(lambda: pacer.buffered_seconds >= 0.07 or pacer._ended, "audio")  # a consumer that never starves
        got.append(pacer.read(7))
    assert pacer.stop().underruns == 0
    expected = np.repeat(np.arange(4, dtype=np.float32), 10)
    assert np.concatenate(got, axis=1)[0, :40].tolist() == expected.tolist()


def test_a_control_change_is_generated_at_once_past_a_full_buffer():
    session, pacer = pacer_with_a_full_buffer()
    assert len(session.queue) == 3  # waiting: the buffer is full and nothing is playing
    session.controls_version = 1  # a control change: old-version chunks go out until one made under it does
    wait_for(lambda: not session.queue, "the chunks before the change")
    session.release(10, 5.0, version=1)
    session.release(10, 6.0, version=1)
    wait_for(lambda: pacer.buffered_seconds >= 0.5, "the first chunk under the change")
    time.sleep(0.1)
    assert len(session.queue) == 1 and pacer.buffered_seconds == pytest.approx(0.5)  # then it waits again
    session.end()
    pacer.stop()


def test_pacer_degrades_when_slower_than_real_time():
    session = FakeSession(delay=0.02)  # 20 ms per chunk of 10 ms of audio: half real time
    pacer = Pacer(session, lookahead_seconds=1.0, degrade_after=2).start()
    for _ in range(8):
        session.release(1)
    session.end()
    wait_for(lambda: pacer._ended, "the producer")
    assert pacer.stop().degradations == ["cheaper 1", "cheaper 2"]  # then nothing left to give


def test_play_realtime_produces_in_the_calling_thread_and_plays_everything():
    session = FakeSession()
    for i in range(5):
        session.release(4, float(i + 1))
    session.end()
    producers, played = set(), []
    pacer = Pacer(session, lookahead_seconds=0.05, on_chunk=lambda chunk: producers.add(threading.get_ident()))
    stats = pacer.play_realtime(block_seconds=0.03, sink=played.append)
    assert producers == {threading.get_ident()}  # the models' thread, not a new one (see heartmula.stream.pacer)
    audio = np.concatenate(played, axis=1)[0]
    assert audio[audio != 0].tolist() == np.repeat(np.arange(1, 6, dtype=np.float32), 4).tolist()
    assert stats.chunks == 5 and stats.underruns == 0 and stats.played_seconds == pytest.approx(0.2)


def test_real_session_degrade_ladder(generator, codecs):
    from heartmula.stream import StreamSession

    flow = StreamSession(generator, codecs["tiny"], "", seed=1, max_seconds=1.0, codec_steps=10)
    assert [flow.degrade() for _ in range(5)] == [
        "codec steps 10 -> 5", "codec steps 5 -> 2", "codec guidance 1.25 -> 1.0", None, None]
    assert StreamSession(generator, codecs["tiny-direct"], "", seed=1).degrade() is None


def test_control_scripts_text_and_json_agree(tmp_path):
    text = tmp_path / "controls.txt"
    text.write_text(
        "# a demo\n"
        "8s   prompts='jazz,piano:0.2|electronic:0.8'  cfg_scale=2.0\n"
        "0    temperature=0.9\n"
        "f200 top_k=30   # frames work too\n",
        encoding="utf-8",
    )
    js = tmp_path / "controls.json"
    js.write_text('[{"at": 8, "prompts": {"jazz,piano": 0.2, "electronic": 0.8}, "cfg_scale": 2},'
                  ' {"frame": 200, "top_k": 30}, {"at": "0s", "temperature": 0.9}]', encoding="utf-8")
    expected = [
        ControlChange(0, {"temperature": 0.9}),
        ControlChange(100, {"prompts": (("jazz,piano", 0.2), ("electronic", 0.8)), "cfg_scale": 2.0}),
        ControlChange(200, {"top_k": 30}),
    ]
    for path in (text, js):
        got = read_control_script(path)
        assert [(c.frame, c.changes) for c in got] == [(c.frame, c.changes) for c in expected]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("soon temperature=1", "cannot read the time"),
        ("1.0 volume=3", "unknown control"),
        ("1.0 temperature", "expected key=value"),
        ("1.0 top_k=many", "top_k must be a number"),
        ("1.0", "changes nothing"),
        ("1.0 prompts='jazz:-1'", "finite and >= 0"),
    ],
)
def test_control_script_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text("0 temperature=1\n" + content + "\n", encoding="utf-8")
    with pytest.raises(HeartMuLaError, match=message):
        read_control_script(path)


def test_control_script_json_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"at": 1}', encoding="utf-8")
    with pytest.raises(HeartMuLaError, match="JSON list"):
        read_control_script(path)
    path.write_text('[{"temperature": 1}]', encoding="utf-8")
    with pytest.raises(HeartMuLaError, match="either 'at' or 'frame'"):
        read_control_script(path)
    with pytest.raises(HeartMuLaError, match="cannot read the control file"):
        read_control_script(tmp_path / "missing.txt")


def test_live_wav_is_readable_while_it_grows(tmp_path):
    path = tmp_path / "live.wav"
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-0.9, 0.9, (2, n)).astype(np.float32) for n in (100, 37, 250)]
    with LiveWavWriter(path, 4800, 2) as writer:
        assert sf.info(str(path)).frames == 0
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            data, rate = sf.read(str(path), dtype="float32")  # a reader in the middle of the stream
            assert rate == 4800 and data.shape == (sum(c.shape[1] for c in chunks[: i + 1]), 2)
    np.testing.assert_allclose(data.T, np.concatenate(chunks, axis=1), atol=1e-4)  # 16-bit
    with pytest.raises(HeartMuLaError, match=r"\.wav"):
        LiveWavWriter(tmp_path / "live.mp3", 4800, 2)
