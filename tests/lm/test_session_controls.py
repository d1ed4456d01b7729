"""GenerationSession extensions used by the streaming engine: audio prompts, prompts added or removed mid-song,
explicit state, several sessions sharing one model."""

import pytest
import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import GenerationSession, SamplingParams, SongRequest

LYRICS = "[verse]\nhello little star"
GREEDY = SamplingParams(top_k=1)
# with lyrics guidance every tag prompt has a twin row without the lyrics, which must follow its prompt everywhere
LYRICS_GUIDED = SamplingParams(top_k=1, lyrics_scale=4.0)
LONG_TAGS = "a much longer jazz prompt with many tags,saxophone,night,smoky"


def run(session, frames, hook=None):
    out = []
    for i in range(frames):
        if hook is not None:
            hook(session, i)
        out.append(session.next_frame().codes[0])
    return torch.stack(out, dim=1)


def test_audio_prompt_continues_the_song(generator):
    full = run(generator.start([SongRequest(LYRICS, "pop,piano")], GREEDY, 30), 20)
    continued = generator.start([SongRequest(LYRICS, "pop,piano", audio_codes=full[:, :8])], GREEDY, 30)
    assert torch.equal(run(continued, 12), full[:, 8:])


def test_audio_prompt_rejects_bad_codes(generator):
    with pytest.raises(HeartMuLaError, match="audio prompt"):
        generator.start([SongRequest(LYRICS, "pop", audio_codes=torch.zeros(3, 4, dtype=torch.long))], GREEDY, 5)
    with pytest.raises(HeartMuLaError, match=r"lie in \[0, 32\)"):
        generator.start([SongRequest(LYRICS, "pop", audio_codes=torch.full((8, 4), 99))], GREEDY, 5)


@pytest.mark.parametrize("sampling", [GREEDY, LYRICS_GUIDED])
@pytest.mark.parametrize("tags", ["jazz", LONG_TAGS])  # shorter and longer than the rows already there
def test_prompt_added_mid_song_equals_a_prompt_there_from_the_start(generator, tags, sampling):
    def fade_in(session, i):
        if i == 7:
            session.set_prompt_weights(0, [0.5, 0.5])

    def add(session, i):
        if i == 7:
            session.add_prompt(0, tags, [0.5, 0.5])

    there = run(generator.start([SongRequest(LYRICS, [("pop,piano", 1), (tags, 0)])], sampling, 30), 20, fade_in)
    added = generator.start([SongRequest(LYRICS, "pop,piano")], sampling, 30)
    got = run(added, 20, add)
    assert torch.equal(got, there)
    assert added.prompt_tags(0) == [("pop,piano", 0.5), (tags, 0.5)]


@pytest.mark.parametrize("sampling, rows_left", [(GREEDY, 2), (LYRICS_GUIDED, 3)])
def test_prompt_removed_mid_song_equals_weight_zero(generator, sampling, rows_left):
    def remove(session, i):
        if i == 7:
            session.remove_prompt(0, 1, [1.0])

    def silence(session, i):
        if i == 7:
            session.set_prompt_weights(0, [1.0, 0.0])

    song = SongRequest(LYRICS, [("pop,piano", 1), ("jazz", 1)])
    removed = generator.start([song], sampling, 30)
    got = run(removed, 20, remove)
    assert torch.equal(got, run(generator.start([song], sampling, 30), 20, silence))
    assert len(removed.rows) == rows_left  # the row (and its twin) left the batch
    with pytest.raises(HeartMuLaError, match="at least one tag prompt"):
        removed.remove_prompt(0, 0, [])


@pytest.mark.parametrize("sampling", [SamplingParams(top_k=10), SamplingParams(top_k=10, lyrics_scale=3.0)])
def test_state_round_trip_continues_identically(generator, sampling):
    song = SongRequest(LYRICS, [("pop,piano", 0.6), ("jazz", 0.4)], seed=3)
    session = generator.start([song], sampling, 40)
    head = run(session, 10)
    session.add_prompt(0, LONG_TAGS, [0.2, 0.3, 0.5])  # a grown cache must survive the round trip too
    tensors, meta = session.state_dict()
    tail = run(session, 15)
    session.close()
    resumed = GenerationSession.from_state(generator, tensors, meta)
    assert torch.equal(run(resumed, 15), tail)
    resumed.close()
    straight = generator.start([song], sampling, 40)
    assert torch.equal(run(straight, 10), head)


def test_two_sessions_take_turns_on_one_model(generator):
    songs = [SongRequest(LYRICS, "pop", seed=1), SongRequest("", "jazz", seed=2)]
    alone = [run(generator.start([s], SamplingParams(top_k=10), 20), 12) for s in songs]
    a, b = (generator.start([s], SamplingParams(top_k=10), 20) for s in songs)
    got_a, got_b = [], []
    for _ in range(12):
        got_a.append(a.next_frame().codes[0])
        got_b.append(b.next_frame().codes[0])
    assert torch.equal(torch.stack(got_a, 1), alone[0])
    assert torch.equal(torch.stack(got_b, 1), alone[1])
