"""Pacer: runs a StreamSession a little ahead of real-time playback.

The producer keeps `lookahead_seconds` of audio buffered and then waits, so a control change is heard after at
most the buffer plus the session's own latency (a deeper buffer would only delay the player's hands); a control
change wakes it at once, so audio made under the change exists after the session's latency alone. The consumer
(a sound-card callback, a network sender, a simulated clock) calls `read(samples)` at playback rate and always gets
audio back: when the buffer runs dry mid-song it gets silence, the pacer counts an underrun, and degrades
gracefully instead of stuttering:
- it rebuffers: playback resumes only once the (grown) look-ahead is buffered again, so a machine slower than real
  time produces a few longer pauses rather than a stutter every chunk; the look-ahead doubles after each underrun
  up to `max_lookahead_seconds`;
- when the producer is measurably slower than real time it asks the session for cheaper decoding
  (`StreamSession.degrade`: fewer flow-matching steps, then no codec guidance) and records what it gave up.

Produce in the thread that loaded the models and built the session (`produce()`, or `play_realtime()` which does
so): torch's CPU kernels use GNU OpenMP, which cuts its spin-wait to almost nothing once more of its threads exist
than cores. A second thread running multi-threaded torch work (a producer thread beside a main thread that already
did) therefore wakes its helpers through the kernel for every small operation, which slows each LM frame on a
machine with few cores (`bench/lm_threads.py` measures it). `start()` runs the producer in a thread for callers
whose own thread must stay free.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from heartmula.errors import HeartMuLaError


@dataclass
class PacerStats:
    chunks: int = 0
    produced_seconds: float = 0.0  # audio generated
    compute_seconds: float = 0.0  # wall time spent generating it
    played_seconds: float = 0.0  # audio handed to the consumer (song audio, silence excluded)
    underruns: int = 0  # times the buffer ran dry mid-song
    underrun_seconds: float = 0.0  # silence handed out because of them (rebuffering included)
    time_to_first_audio: float | None = None  # start() -> first chunk ready
    lookahead_seconds: float = 0.0  # current target
    degradations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def rtf(self) -> float:
        """Compute time per second of audio (< 1: faster than real time)."""
        return self.compute_seconds / self.produced_seconds if self.produced_seconds else float("nan")


class Pacer:
    """Producer + jitter buffer for one StreamSession.

        pacer = Pacer(session, lookahead_seconds=0.5, on_chunk=writer_callback)
        # a consumer (e.g. a sound-card callback) calls pacer.read(block) at playback rate meanwhile
        pacer.produce()                 # returns once the song is generated (or stop() was called)
        pacer.stop(); print(pacer.stats)
    """

    def __init__(self, session, lookahead_seconds: float = 0.5, max_lookahead_seconds: float = 4.0,
                 on_chunk=None, degrade_after: int = 3):
        if not 0 < lookahead_seconds <= max_lookahead_seconds:
            raise HeartMuLaError("need 0 < lookahead_seconds <= max_lookahead_seconds")
        self.session = session
        self.lookahead = float(lookahead_seconds)
        self.max_lookahead = float(max_lookahead_seconds)
        self.on_chunk = on_chunk  # called by the producer with every AudioChunk (e.g. a file writer)
        self.degrade_after = degrade_after  # consecutive slower-than-real-time chunks before degrading
        self.stats = PacerStats(lookahead_seconds=self.lookahead)
        self._buffer: deque[np.ndarray] = deque()
        self._buffered = 0  # samples
        self._condition = threading.Condition()
        self._ended = False  # the producer has handed over the last chunk
        self._stop = False
        self._rebuffering = True  # playback starts once the look-ahead is buffered
        self._playing = False  # silence before the first audio is start-up, not an underrun
        # Newest controls version in audio handed out: a newer one (a control change) makes the producer generate
        # at once, past a full buffer, until audio made under it exists (control latency does not wait for
        # playback to drain the buffer).
        self._version_out = 0
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        self.rate, self.channels = session.sample_rate, session.channels

    # --- producer -------------------------------------------------------------------------------------------
    def start(self) -> Pacer:
        """Produce in a new thread (see the module doc for why `produce()` in the model's thread is faster)."""
        self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self.produce, name="heartmula-stream-producer", daemon=True)
        self._thread.start()
        return self

    def produce(self) -> None:
        """Generate into the buffer, in the calling thread, until the song ends or `stop()`; errors end the song
        and show in `stats.error`."""
        if self._started_at is None:
            self._started_at = time.perf_counter()
        slow_streak = 0
        try:
            while True:
                with self._condition:
                    while (not self._stop and self._buffered >= self.lookahead * self.rate
                           and self._version_out >= self.session.controls_version):
                        self._condition.wait(0.02)
                    if self._stop:
                        return
                began = time.perf_counter()
                chunk = self.session.next_chunk()
                spent = time.perf_counter() - began
                if chunk is None:
                    return
                self._version_out = max(self._version_out, chunk.controls_version)
                if self.on_chunk is not None:
                    self.on_chunk(chunk)
                with self._condition:
                    s = self.stats
                    if s.time_to_first_audio is None:
                        s.time_to_first_audio = time.perf_counter() - self._started_at
                    s.chunks += 1
                    s.produced_seconds += chunk.seconds
                    s.compute_seconds += spent
                    self._buffer.append(chunk.audio)
                    self._buffered += chunk.audio.shape[1]
                    self._condition.notify_all()
                slow_streak = slow_streak + 1 if spent > chunk.seconds else 0
                if slow_streak >= self.degrade_after:
                    slow_streak = 0
                    change = self.session.degrade()
                    if change is not None:
                        self.stats.degradations.append(change)
        except Exception as exc:  # surfaced to the consumer through stats.error and `done`
            self.stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    # --- consumer -------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """The song is over and every sample has been read."""
        with self._condition:
            return self._ended and self._buffered == 0

    @property
    def buffered_seconds(self) -> float:
        return self._buffered / self.rate

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the look-ahead is buffered (or the song has ended); False on timeout."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._condition:
            while not self._ended and self._buffered < self.lookahead * self.rate:
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    return False
                self._condition.wait(left if left is not None else 0.1)
            self._rebuffering = False
            return True

    def read(self, samples: int) -> np.ndarray:
        """Exactly `samples` of audio for playback now, never blocking: silence where the buffer is empty."""
        out = np.zeros((self.channels, samples), dtype=np.float32)
        with self._condition:
            if self._rebuffering and not self._ended and self._buffered < self.lookahead * self.rate:
                if self._playing:
                    self.stats.underrun_seconds += samples / self.rate
                return out
            self._rebuffering, self._playing = False, True
            filled = 0
            while filled < samples and self._buffer:
                head = self._buffer[0]
                take = min(samples - filled, head.shape[1])
                out[:, filled : filled + take] = head[:, :take]
                filled += take
                if take == head.shape[1]:
                    self._buffer.popleft()
                else:
                    self._buffer[0] = head[:, take:]
            self._buffered -= filled
            self.stats.played_seconds += filled / self.rate
            if filled < samples and not self._ended:
                self.stats.underruns += 1
                self.stats.underrun_seconds += (samples - filled) / self.rate
                self.lookahead = min(self.max_lookahead, self.lookahead * 2)
                self.stats.lookahead_seconds = self.lookahead
                self._rebuffering = True
            self._condition.notify_all()
        return out

    def stop(self) -> PacerStats:
        with self._condition:
            self._stop = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
        return self.stats

    def play_realtime(self, block_seconds: float = 0.02, sink=None) -> PacerStats:
        """Produce in the calling thread while a clock thread consumes at wall-clock rate (a simulated sound
        card) until the song ends; `sink(audio)` gets each block, in the clock thread. Used by the benchmark."""
        block = max(1, round(block_seconds * self.rate))

        def consume():
            self.wait_ready()
            next_time = time.perf_counter()
            while not self.done:
                audio = self.read(block)
                if sink is not None:
                    sink(audio)
                next_time += block / self.rate
                delay = next_time - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

        clock = threading.Thread(target=consume, name="heartmula-stream-clock", daemon=True)
        self._started_at = time.perf_counter()
        clock.start()
        self.produce()
        clock.join()
        self.stop()
        if self.stats.error:
            raise HeartMuLaError(f"the stream failed: {self.stats.error}")
        return self.stats
