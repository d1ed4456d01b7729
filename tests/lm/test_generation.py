import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heartmula.errors import HeartMuLaError
from heartmula.lm.config import GenerationConfig
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.nn.sampling import sample_among_top_k, sample_top_k
from heartmula.nn.transformer import Attention, KVCache, TransformerConfig

LYRICS = "[verse]\nhello little star\n[chorus]\nshine on me"
GREEDY = SamplingParams(temperature=1.0, top_k=1, cfg_scale=1.5)


# --- an independent slow reference: no KV cache, the whole sequence recomputed for every frame -----------------
def reference_greedy(generator, tags: str, lyrics: str, frames: int, cfg_scale: float) -> torch.Tensor:
    model = generator.model
    tokens, mask, slot = generator.build_prompt(tags, lyrics)
    k = model.num_codebooks
    guided = cfg_scale != 1.0
    rows = [False, True] if guided else [False]
    history: list[torch.Tensor] = []
    out = []
    with torch.no_grad():
        for frame in range(frames):
            last = []
            for unconditional in rows:
                seq_tokens = [tokens]
                seq_masks = [mask]
                for codes in history:
                    row = torch.zeros(1, k + 1, dtype=torch.long)
                    row[0, :k] = codes
                    row_mask = torch.ones(1, k + 1, dtype=torch.bool)
                    row_mask[0, -1] = False
                    seq_tokens.append(row)
                    seq_masks.append(row_mask)
                t = torch.cat(seq_tokens)[None]
                m = torch.cat(seq_masks)[None]
                hidden = model.embed_rows(t, m, torch.tensor([unconditional]))
                hidden[0, slot] = (
                    model.unconditional_embedding() if unconditional else model.muq_linear(torch.zeros(512))
                )
                positions = torch.arange(t.shape[1])
                last.append(model.backbone(hidden, positions)[0, -1])
            last_hidden = torch.stack(last)

            def guide(logits):
                if not guided:
                    return logits[0]
                return logits[1] + (logits[0] - logits[1]) * cfg_scale

            invalid = torch.zeros(model.config.audio_vocab_size, dtype=torch.bool)
            invalid[generator.codebook_size :] = True
            c0_invalid = invalid.clone()
            c0_invalid[generator.gen_config.audio_eos_id] = frame == 0
            c0 = int(guide(model.codebook0_head(last_hidden)).masked_fill(c0_invalid, -1e30).argmax())
            codes = [c0]
            decoder_inputs = [last_hidden, model.embed_audio(0, torch.tensor([c0] * len(rows)))]
            for codebook in range(1, k):
                x = model.projection(torch.stack(decoder_inputs, dim=1))
                hidden = model.decoder(x, torch.arange(x.shape[1]))[:, -1]
                code = int(guide(model.codebook_logits(codebook, hidden)).masked_fill(invalid, -1e30).argmax())
                codes.append(code)
                decoder_inputs.append(model.embed_audio(codebook, torch.tensor([code] * len(rows))))
            frame_codes = torch.tensor(codes)
            if frame > 0 and frame_codes[0] == generator.gen_config.audio_eos_id:
                break
            out.append(frame_codes)
            history.append(frame_codes)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("cfg_scale", [1.5, 1.0])
def test_cached_engine_matches_slow_reference(generator, cfg_scale):
    expected = reference_greedy(generator, "pop,piano", LYRICS, frames=12, cfg_scale=cfg_scale)
    sampling = SamplingParams(top_k=1, cfg_scale=cfg_scale)
    got = generator.generate([SongRequest(lyrics=LYRICS, tags="pop,piano")], sampling, max_new_frames=11)[0]
    assert torch.equal(got, expected)


def test_prompt_layout(generator):
    tokens, mask, slot = generator.build_prompt("Pop,Piano", "[Verse]\nHi")
    tok = generator.tokenizer
    tag_ids = tok.tokenizer.encode("<tag>pop,piano</tag>").ids
    lyric_ids = tok.tokenizer.encode("[verse]\nhi").ids
    assert slot == len(tag_ids) + 2  # BOS + tags + EOS, then the reference slot
    text = tokens[:, -1].tolist()
    assert text == [tok.bos_id, *tag_ids, tok.eos_id, 0, tok.bos_id, *lyric_ids, tok.eos_id]
    assert mask[:, -1].all() and not mask[:, :-1].any()
    assert not tokens[:, :-1].any()


def test_already_wrapped_tags_are_not_wrapped_twice(generator):
    a = generator.build_prompt("<tag>rock</tag>", "")[0]
    b = generator.build_prompt("rock", "")[0]
    assert torch.equal(a, b)


def test_unconditional_rows_embed_null_text_everywhere(generator):
    model = generator.model
    tokens, mask, _ = generator.build_prompt("pop", LYRICS)
    rows = model.embed_rows(tokens[None].repeat(2, 1, 1), mask[None].repeat(2, 1, 1), torch.tensor([False, True]))
    null = model.unconditional_embedding()
    assert torch.allclose(rows[1], null.expand_as(rows[1]))
    assert not torch.allclose(rows[0], rows[1])


def test_guidance_formula_and_mixing(generator):
    songs = [SongRequest(lyrics=LYRICS, tags="jazz:3,electronic:1")]
    session = generator.start(songs, SamplingParams(cfg_scale=2.0), max_new_frames=4)
    assert [r.unconditional for r in session.rows] == [False, False, True]
    logits = torch.randn(3, 37)
    expected = logits[2] + (0.75 * (logits[0] - logits[2]) + 0.25 * (logits[1] - logits[2])) * 2.0
    assert torch.allclose(session.guide(logits)[0], expected, atol=1e-6)
    session.set_prompt_weights(0, [0, 5])
    assert torch.allclose(session.guide(logits)[0], logits[2] + (logits[1] - logits[2]) * 2.0, atol=1e-6)
    with pytest.raises(HeartMuLaError, match="2 tag prompts"):
        session.set_prompt_weights(0, [1.0])
    with pytest.raises(HeartMuLaError, match="not all be 0"):
        session.set_prompt_weights(0, [0, 0])
    session.close()


def test_compat_guidance_keeps_upstream_operations(generator):
    """Default mode: one product with the guidance matrix (float32 rounding differs); compat: upstream's bits."""
    song = SongRequest(lyrics=LYRICS, tags="pop")
    logits = torch.randn(2, 37)
    upstream = logits[1] + (logits[0] - logits[1]) * 1.5
    compat = generator.start([song], SamplingParams(cfg_scale=1.5), max_new_frames=4, compat=True)
    assert torch.equal(compat.guide(logits)[0], upstream)
    compat.close()
    default = generator.start([song], SamplingParams(cfg_scale=1.5), max_new_frames=4)
    assert torch.equal(default.guidance.matrix(1.5, None), torch.tensor([[1.5, -0.5]]))
    assert torch.allclose(default.guide(logits)[0], upstream, atol=1e-5)
    default.close()


def test_mixing_with_all_weight_on_one_prompt_equals_that_prompt(generator):
    sampling = SamplingParams(top_k=1, cfg_scale=1.5)
    alone = generator.generate([SongRequest(lyrics=LYRICS, tags="jazz")], sampling, 10)[0]
    mixed = generator.generate([SongRequest(lyrics=LYRICS, tags=[("jazz", 1.0), ("metal,loud", 0.0)])], sampling, 10)
    assert torch.equal(mixed[0], alone)


def test_weights_changed_mid_song_take_effect_at_the_next_frame(generator):
    sampling = SamplingParams(top_k=1, cfg_scale=3.0)
    song = SongRequest(lyrics=LYRICS, tags=[("jazz", 1.0), ("metal,loud,fast", 0.0)])
    session = generator.start([song], sampling, max_new_frames=12)
    frames = [session.next_frame().codes[0] for _ in range(6)]
    session.set_prompt_weights(0, [0.0, 1.0])
    frames += [session.next_frame().codes[0] for _ in range(7)]
    steered = torch.stack(frames, dim=1)
    jazz_only = generator.generate([SongRequest(lyrics=LYRICS, tags="jazz")], sampling, 12)[0]
    assert torch.equal(steered[:, :6], jazz_only[:, :6])
    assert jazz_only.shape[1] > 6 and not torch.equal(steered[:, 6], jazz_only[:, 6])


def test_seed_reproducibility(generator):
    sampling = SamplingParams(temperature=1.0, top_k=20, cfg_scale=1.5)
    a = generator.generate([SongRequest(lyrics=LYRICS, tags="pop", seed=5)], sampling, 15)[0]
    b = generator.generate([SongRequest(lyrics=LYRICS, tags="pop", seed=5)], sampling, 15)[0]
    c = generator.generate([SongRequest(lyrics=LYRICS, tags="pop", seed=6)], sampling, 15)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batch_equals_songs_generated_one_by_one(generator):
    sampling = SamplingParams(temperature=1.0, top_k=10, cfg_scale=1.5)
    songs = [
        SongRequest(lyrics=LYRICS, tags="pop,piano", seed=1),
        SongRequest(lyrics="", tags="ambient", seed=2),  # a shorter prompt: exercises left padding
        SongRequest(lyrics="[chorus]\n我爱你 la la la", tags="jazz:0.6,electronic:0.4", seed=3),
    ]
    batched = generator.generate(songs, sampling, 14)
    for song, codes in zip(songs, batched):
        assert torch.equal(codes, generator.generate([song], sampling, 14)[0])


def test_frame_iterator_equals_one_shot(generator):
    sampling = SamplingParams(temperature=0.9, top_k=8, cfg_scale=2.0)
    song = SongRequest(lyrics=LYRICS, tags="rock", seed=11)
    one_shot = generator.generate([song], sampling, 20)[0]
    session = generator.start([song], sampling, 20)
    frames = [step.codes[0] for step in session.iter_frames() if bool(step.valid[0])]
    assert torch.equal(torch.stack(frames, dim=1), one_shot)


def test_instrumental_empty_lyrics(generator):
    tokens, _, slot = generator.build_prompt("piano", "   ")
    assert tokens[slot + 1 :, -1].tolist() == [generator.tokenizer.bos_id, generator.tokenizer.eos_id]
    codes = generator.generate([SongRequest(lyrics="", tags="piano", seed=0)], SamplingParams(), 6)[0]
    assert codes.shape[0] == 8 and codes.shape[1] >= 1


def test_context_overflow_raises_before_any_work(generator, monkeypatch):
    calls = []
    monkeypatch.setattr(generator.model.backbone, "forward", lambda *a, **k: calls.append(1))
    limit = generator.model.config.backbone.max_seq_len
    with pytest.raises(HeartMuLaError, match="exceeds the model's context"):
        generator.generate([SongRequest(lyrics=LYRICS, tags="pop")], SamplingParams(), limit)
    assert not calls


def test_duration_to_frames():
    assert frames_for_duration(10) == 125
    assert frames_for_duration(0.5) == 6
    with pytest.raises(HeartMuLaError):
        frames_for_duration(0)


def test_undecodable_codes_are_never_sampled_but_compat_reproduces_upstream(generator):
    size = generator.codebook_size  # 32 in the tiny preset; 33 is EOS, 34-36 other specials
    # Make code `size` win on codebook 1: a head column aligned with the decoder's output at frame 0.
    sampling = SamplingParams(top_k=1, cfg_scale=1.0)
    song = SongRequest(lyrics=LYRICS, tags="pop")
    with torch.no_grad():
        session = generator.start([song], sampling, 0)
        hidden = session._prefill()
        x = generator.model.projection(
            torch.stack([hidden, generator.model.embed_audio(0, torch.zeros(1, dtype=torch.long))], dim=1))
        direction = generator.model.decoder(x, torch.arange(2))[0, -1]
        session.close()
        generator.model.audio_head[0][:, size] = direction * 1e3  # codebook 1 prefers the undecodable code
    fixed = generator.generate([song], sampling, 8)[0]
    assert int(fixed.max()) < size
    compat = generator.generate([song], sampling, 8, compat=True)[0]
    assert int(compat[1, 0]) == size  # upstream emits it (and passes its EOS check)


def _favour_eos(generator, song, sampling) -> None:
    """Point the EOS row of the codebook-0 head at the prefill's hidden state: EOS then wins at every frame."""
    with torch.no_grad():
        session = generator.start([song], sampling, 0)
        direction = session._prefill()[0]
        session.close()
        generator.model.codebook0_head.weight[generator.gen_config.audio_eos_id] = direction * 1e3


def test_eos_ends_the_song_but_never_frame_zero(generator):
    eos = generator.gen_config.audio_eos_id
    sampling = SamplingParams(top_k=1, cfg_scale=1.0)
    song = SongRequest(lyrics=LYRICS, tags="pop")
    _favour_eos(generator, song, sampling)
    # The prefill frame would be EOS: the default mode keeps a frame; later frames end the song quickly.
    codes = generator.generate([song], sampling, 10)[0]
    assert codes.shape[1] >= 1 and int(codes[0, 0]) != eos
    compat = generator.generate([song], sampling, 10, compat=True)[0]
    assert int(compat[0, 0]) == eos  # upstream never checks frame 0


def test_minimum_length_keeps_the_song_going(generator):
    from heartmula.lm.generation import min_frames_for

    eos = generator.gen_config.audio_eos_id
    sampling = SamplingParams(top_k=1, cfg_scale=1.0)
    song = SongRequest(lyrics=LYRICS, tags="pop")
    saved = generator.model.codebook0_head.weight[eos].detach().clone()
    _favour_eos(generator, song, sampling)
    try:
        assert generator.generate([song], sampling, 10)[0].shape[1] < 6
        codes = generator.generate([song], sampling, 10, min_new_frames=6)[0]
        assert codes.shape[1] >= 6 and not (codes[0, :6] == eos).any()
        with pytest.raises(HeartMuLaError, match="compat"):
            generator.generate([song], sampling, 10, compat=True, min_new_frames=6)
    finally:
        with torch.no_grad():
            generator.model.codebook0_head.weight[eos] = saved
    assert min_frames_for(0, 30) == 0 and min_frames_for(2.0, 30) == 25 and min_frames_for(99, 2.0) == 26
    with pytest.raises(HeartMuLaError, match="minimum duration"):
        min_frames_for(-1, 30)


def test_sampling_edge_cases():
    logits = torch.tensor([[0.0, 5.0, 1.0, -2.0], [3.0, 0.0, 0.0, 0.0]])
    assert sample_top_k(logits, 1, 1.0).tolist() == [1, 0]
    assert sample_top_k(logits, 10, 0.0).tolist() == [1, 0]  # temperature 0 = greedy; k > vocab is fine
    g = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    draws = torch.stack([sample_top_k(logits, 2, 1.0, g) for _ in range(200)])
    assert set(draws[:, 0].tolist()) <= {1, 2}  # only the top-2 codes can come out
    assert set(draws[:, 0].tolist()) == {1, 2}
    for bad in (SamplingParams(top_k=0), SamplingParams(temperature=-1), SamplingParams(cfg_scale=float("nan"))):
        with pytest.raises(HeartMuLaError):
            bad.validate()


@pytest.mark.parametrize("sampler", [sample_top_k, sample_among_top_k])
def test_samplers_draw_from_the_tempered_top_k(sampler):
    logits = torch.tensor([[2.0, 0.5, 1.5, -1.0, 1.0, 0.0]])
    top_k, temperature, draws = 3, 0.7, 6000
    generator = [torch.Generator().manual_seed(1)]
    counts = torch.bincount(torch.cat([sampler(logits, top_k, temperature, generator) for _ in range(draws)]),
                            minlength=6).float()
    expected = torch.zeros(6)
    expected[[0, 2, 4]] = torch.softmax(logits[0, [0, 2, 4]] / temperature, dim=0)
    assert counts[[1, 3, 5]].sum() == 0
    assert torch.allclose(counts / draws, expected, atol=0.02)
    assert sampler(logits, 1, 1.0).tolist() == [0] and sampler(logits, 4, 0.0).tolist() == [0]


def test_sampler_follows_upstream_random_stream():
    """Same seed, same draw as upstream's sampler (probs / Exponential noise from the global generator)."""
    logits = torch.randn(1, 50)
    torch.manual_seed(3)
    ours = sample_top_k(logits, 10, 0.8)
    torch.manual_seed(3)
    scaled = logits / 0.8
    scaled = scaled.masked_fill(scaled < torch.topk(scaled, 10)[0][..., -1, None], float("-inf"))
    probs = F.softmax(F.log_softmax(scaled, dim=-1), dim=-1)
    theirs = torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1)
    assert torch.equal(ours, theirs)


def test_gqa_cached_attention_equals_expanded_heads():
    config = TransformerConfig(num_layers=1, num_heads=8, num_kv_heads=2, embed_dim=64, intermediate_dim=64,
                               max_seq_len=64)
    attn = Attention(config).eval()
    cache = KVCache(1, 2, 16, 8, torch.float32, "cpu")
    x = torch.randn(1, 7, 64)
    table = torch.ones(16, 4, dtype=torch.complex64)  # identity rotation isolates attention
    with torch.no_grad():
        out_prefill = attn(x[:, :6], table[None, :6], 0, None, cache)
        out_step = attn(x[:, 6:], table[None, 6:7], 6, None, cache)
        q = attn.q_proj(x).view(1, 7, 8, 8).transpose(1, 2)
        k = attn.k_proj(x).view(1, 7, 2, 8).transpose(1, 2).repeat_interleave(4, dim=1)
        v = attn.v_proj(x).view(1, 7, 2, 8).transpose(1, 2).repeat_interleave(4, dim=1)
        scores = (q @ k.transpose(-1, -2)) / np.sqrt(8)
        scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
        expected = attn.output_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 7, 64))
    assert cache.k.shape == (1, 2, 16, 8)  # stored per KV head, not expanded
    assert torch.allclose(torch.cat([out_prefill, out_step], dim=1), expected, atol=1e-5)


# --- lyrics guidance: a sung song's tags without its lyrics as the branch the lyrics are measured against ---------
def test_lyrics_guidance_rows_and_formula(generator):
    song = SongRequest(lyrics=LYRICS, tags="jazz:3,electronic:1")
    session = generator.start([song], SamplingParams(cfg_scale=2.0, lyrics_scale=5.0), max_new_frames=4)
    assert [(r.without_lyrics, r.unconditional) for r in session.rows] == [
        (False, False), (True, False), (False, False), (True, False), (False, True)]
    twin, conditional = session.rows[1], session.rows[0]
    assert twin.tags == conditional.tags
    assert torch.equal(twin.tokens, generator.build_prompt(twin.tags, "")[0])  # same tags, no lyrics
    logits = torch.randn(5, 37)
    with_lyrics, without = 0.75 * logits[0] + 0.25 * logits[2], 0.75 * logits[1] + 0.25 * logits[3]
    expected = logits[4] + (without - logits[4]) * 2.0 + (with_lyrics - without) * 5.0
    assert torch.allclose(session.guide(logits)[0], expected, atol=1e-5)
    assert session.prompt_tags(0) == [("jazz", 0.75), ("electronic", 0.25)]
    session.set_prompt_weights(0, [0, 1])
    expected = logits[4] + (logits[3] - logits[4]) * 2.0 + (logits[2] - logits[3]) * 5.0
    assert torch.allclose(session.guide(logits)[0], expected, atol=1e-5)
    session.close()

    unguided = generator.start([song], SamplingParams(cfg_scale=1.0, lyrics_scale=3.0), max_new_frames=4)
    assert len(unguided.rows) == 4  # no unconditional row: the tags' own guidance is off
    logits = torch.randn(4, 37)
    without = 0.75 * logits[1] + 0.25 * logits[3]
    expected = without + (0.75 * logits[0] + 0.25 * logits[2] - without) * 3.0
    assert torch.allclose(unguided.guide(logits)[0], expected, atol=1e-5)
    unguided.close()


def test_lyrics_scale_equal_to_cfg_is_upstream_guidance(generator):
    song = SongRequest(lyrics=LYRICS, tags="pop,piano")
    plain = generator.generate([song], SamplingParams(top_k=1, cfg_scale=2.0), 12)[0]
    same = generator.generate([song], SamplingParams(top_k=1, cfg_scale=2.0, lyrics_scale=2.0), 12)[0]
    pushed = generator.generate([song], SamplingParams(top_k=1, cfg_scale=2.0, lyrics_scale=8.0), 12)[0]
    assert torch.equal(same, plain)
    assert not torch.equal(pushed, plain)


def test_instrumental_song_gets_no_lyrics_branch(generator):
    songs = [SongRequest(lyrics="", tags="jazz", seed=1), SongRequest(lyrics=LYRICS, tags="pop", seed=2)]
    sampling = SamplingParams(top_k=10, lyrics_scale=6.0)
    session = generator.start(songs, sampling, max_new_frames=8)
    assert [r.song for r in session.rows if r.without_lyrics] == [1]
    session.close()
    batch = generator.generate(songs, sampling, 8)
    assert torch.equal(batch[0], generator.generate(songs[:1], SamplingParams(top_k=10), 8)[0])
    assert torch.equal(batch[1], generator.generate(songs[1:], sampling, 8)[0])


def test_lyrics_scale_default_comes_from_the_model(generator, tmp_path):
    song = SongRequest(lyrics=LYRICS, tags="pop")
    generator.gen_config.lyrics_scale = 3.0
    session = generator.start([song], SamplingParams(), 4)
    assert session.lyrics_guided and session.sampling.lyrics_scale == 3.0
    session.update_sampling(lyrics_scale=4.5)  # a live control, like cfg_scale
    assert session.sampling.lyrics_scale == 4.5
    session.close()
    assert generator.start([song], SamplingParams(lyrics_scale=1.0), 4).sampling.lyrics_scale == 1.0

    generator.gen_config.save(tmp_path / "gen_config.json")
    assert GenerationConfig.from_file(tmp_path / "gen_config.json").lyrics_scale == 3.0
    generator.gen_config.lyrics_scale = None  # the official file never gains the key
    generator.gen_config.save(tmp_path / "gen_config.json")
    assert "lyrics_scale" not in (tmp_path / "gen_config.json").read_text()
    session = generator.start([song], SamplingParams(), 4)
    assert not session.lyrics_guided and not any(r.without_lyrics for r in session.rows)
    with pytest.raises(HeartMuLaError, match="no rows without lyrics"):
        session.update_sampling(lyrics_scale=3.0)
    with pytest.raises(HeartMuLaError, match="lyrics_scale must be >= 0"):
        SamplingParams(lyrics_scale=-1.0).validate()
