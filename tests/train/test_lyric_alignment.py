"""The lyric alignment loss: line token spans, frame targets, the attention it scores (against attention weights
computed the plain way), that optimising it moves attention onto the sung line, and the trainer end to end with
line timings stored in the token cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartmula.audio import save_audio
from heartmula.codec.pretrained import write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.manifest import write_manifest
from heartmula.text import TextTokenizer, byte_level_tokenizer
from heartmula.train.lm import LMTrainConfig, train_lm
from heartmula.train.lyric_alignment import (
    AlignmentTargets,
    AttentionRecorder,
    frame_line_targets,
    line_attention_loss,
    line_token_spans,
)
from heartmula.train.token_cache import load_cache, read_index, tokenize_manifest

LYRICS = "[verse]\nThe night is young\nand so are we\n\n[chorus]\nsing it loud\n"
TIMING = [{"text": "The night is young", "start": 0.0, "end": 2.0},
          {"text": "and so are we", "start": 2.4, "end": 4.0},
          {"text": "sing it loud", "start": 4.0, "end": 5.0},
          {"text": "sing it loud", "start": 5.0, "end": 6.0},  # the chorus sung twice, written once
          {"text": "a line the lyrics do not have", "start": 6.0, "end": 7.0}]


def _tokenizer() -> TextTokenizer:
    raw = byte_level_tokenizer()
    return TextTokenizer(raw, raw.token_to_id("<|begin_of_text|>"), raw.token_to_id("<|end_of_text|>"))


def test_line_spans_hold_the_line_tokens():
    tokenizer = _tokenizer()
    ids = tokenizer.encode_lyrics(LYRICS)
    spans = line_token_spans(tokenizer, LYRICS, TIMING)
    assert len(spans) == 4  # the missing line is left out
    for span, entry in zip(spans, TIMING):
        assert tokenizer.decode(ids[span.token_start: span.token_end]) == entry["text"].lower()
        assert (span.start, span.end) == (entry["start"], entry["end"])
    assert spans[2].token_start == spans[3].token_start  # the repeated chorus points at its one written line
    assert spans[0].token_start >= 1  # after the BOS


def test_line_spans_in_chinese_and_empty_lyrics():
    tokenizer = _tokenizer()
    lyrics = "[verse]\n我们一起唱歌\n明天会更好"
    spans = line_token_spans(tokenizer, lyrics, [{"text": "明天会更好", "start": 1.0, "end": 2.0}])
    ids = tokenizer.encode_lyrics(lyrics)
    assert tokenizer.decode(ids[spans[0].token_start: spans[0].token_end]) == "明天会更好"
    assert line_token_spans(tokenizer, "", TIMING) == []


def test_word_spans_follow_the_syllables():
    tokenizer = _tokenizer()
    lyrics = "[verse]\nif anything goes\nwe sing"
    syllables = [("if", 0.0, 0.5), ("a", 0.5, 0.8), ("ny", 0.8, 1.0), ("thing", 1.0, 1.5), ("goes", 1.5, 2.0)]
    timing = [{"text": "if anything goes", "start": 0.0, "end": 2.0,
               "syllables": [{"text": t, "start": a, "end": b} for t, a, b in syllables]},
              {"text": "we sing", "start": 2.0, "end": 3.0, "syllables": [{"text": "la", "start": 2.0, "end": 3.0}]}]
    ids = tokenizer.encode_lyrics(lyrics)
    spans = line_token_spans(tokenizer, lyrics, timing, unit="word")
    words = [(tokenizer.decode(ids[s.token_start: s.token_end]).strip(), s.start, s.end) for s in spans]
    # the syllables of one word share its tokens and become one span; a line whose syllables are not in its text
    # ("la") stays one span
    assert words == [("if", 0.0, 0.5), ("anything", 0.5, 1.5), ("goes", 1.5, 2.0), ("we sing", 2.0, 3.0)]
    assert [(s.start, s.end) for s in line_token_spans(tokenizer, lyrics, timing)] == [(0.0, 2.0), (2.0, 3.0)]
    chinese = "[verse]\n明天会更好"
    timing = [{"text": "明天会更好", "start": 0.0, "end": 5.0,
               "syllables": [{"text": c, "start": float(i), "end": i + 1.0} for i, c in enumerate("明天会更好")]}]
    ids = tokenizer.encode_lyrics(chinese)
    spans = line_token_spans(tokenizer, chinese, timing, unit="word")
    assert [tokenizer.decode(ids[s.token_start: s.token_end]) for s in spans] == list("明天会更好")


def test_frame_targets_follow_the_timing():
    tokenizer = _tokenizer()
    spans = line_token_spans(tokenizer, LYRICS, TIMING)
    index, first, end = frame_line_targets(spans, first_frame=20, frames=20, frame_rate=12.5, lyric_row=7)
    times = (20 + index.numpy() + 0.5) / 12.5
    assert np.all((times < 2.0) | (times >= 2.4))  # the gap between lines 1 and 2 is not sung
    for j, a, b in zip(index.tolist(), first.tolist(), end.tolist()):
        time = (20 + j + 0.5) / 12.5
        span = next(s for s in spans if s.start <= time < s.end)
        assert (a, b) == (7 + span.token_start, 7 + span.token_end)
    assert len(index) == 20 - 5  # frames 0-4 of the crop (1.6-2.0 s ... 2.4 s) fall in the gap


def _tiny_model():
    from heartmula.train.lm import new_model

    torch.manual_seed(0)
    return new_model("tiny", text_vocab=300, codebook_size=64, num_codebooks=8, seed=0)


def _plain_attention(attention, x, rope, heads):
    """Causal attention probabilities [b, heads, s, s] computed the plain way (repeated KV heads, softmax)."""
    from heartmula.nn.rope import apply_rope

    b, s, _ = x.shape
    d = attention.head_dim
    q = apply_rope(attention.q_proj(x).view(b, s, attention.num_heads, d), rope).transpose(1, 2)
    k = apply_rope(attention.k_proj(x).view(b, s, attention.num_kv_heads, d), rope).transpose(1, 2)
    k = k.repeat_interleave(attention.num_heads // attention.num_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) / d ** 0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1)[:, :heads]


def _targets():
    return AlignmentTargets(batch=torch.tensor([0, 0, 1, 1]), rows=torch.tensor([9, 14, 10, 15]),
                            first=torch.tensor([2, 2, 5, 5]), end=torch.tensor([5, 5, 8, 8]))


def test_loss_is_the_attention_mass_on_the_line():
    model = _tiny_model()
    attention = model.backbone.layers[1].attn
    recorder = AttentionRecorder(attention)
    x = torch.randn(2, 16, model.backbone.config.embed_dim)
    with torch.no_grad():
        model.backbone(x, torch.arange(16))
    recorder.remove()
    normed, rope = recorder.inputs
    targets = _targets()
    probs = _plain_attention(attention, normed, rope, heads=3)
    expected = -torch.stack([probs[b, :, r, a:e].sum(-1).log() for b, r, a, e in
                             zip(targets.batch, targets.rows, targets.first, targets.end)]).mean()
    got = line_attention_loss(attention, recorder.inputs, targets, heads=3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_optimising_the_loss_moves_attention_onto_the_line():
    model = _tiny_model()
    attention = model.backbone.layers[1].attn
    x = torch.randn(2, 16, model.backbone.config.embed_dim)
    targets = _targets()
    optimizer = torch.optim.Adam(model.backbone.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        recorder = AttentionRecorder(attention)
        model.backbone(x, torch.arange(16))
        recorder.remove()
        loss = line_attention_loss(attention, recorder.inputs, targets, heads=2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert np.exp(-losses[-1]) > 0.5  # more than half the chosen heads' mass sits on the line


def _corpus(root):
    (root / "audio").mkdir()
    rows = []
    for i in range(3):
        t = np.arange(6 * 16000) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32)
        save_audio(root / f"audio/s{i}.flac", np.stack([tone, tone]), 16000)
        timing = [{**line, "syllables": [{"text": line["text"], "start": line["start"], "end": line["end"]}]}
                  for line in TIMING[:4]]
        rows.append({"id": f"s{i}", "audio": f"audio/s{i}.flac", "vocals": None, "lyrics": LYRICS,
                     "timing": timing, "language": "en", "tags": "pop,piano", "duration": 6.0, "sample_rate": 16000,
                     "source": {"corpus": "test"}, "license": "test", "split": "val" if i == 2 else "train"})
    write_manifest(root / "manifest.jsonl", rows)
    return write_random_codec(root / "codec", "tiny-direct", seed=0)


def test_cache_keeps_line_timings_and_training_logs_the_alignment_loss(tmp_path):
    codec = _corpus(tmp_path)
    cache = tmp_path / "cache"
    tokenize_manifest(tmp_path / "manifest.jsonl", codec, cache, progress=False)
    # A cache written before (syllable) timings were kept gets them on the next run, without encoding again.
    index = read_index(cache)
    for meta in index["items"].values():
        del meta["timing"]
    (cache / "index.json").write_text(json.dumps(index))
    again = tokenize_manifest(tmp_path / "manifest.jsonl", codec, cache, progress=False)
    assert not again.encoded
    _, items = load_cache(cache)
    assert [line["text"] for line in items[0].timing] == [line["text"] for line in TIMING[:4]]
    assert items[0].timing[0]["syllables"] == [{"text": "The night is young", "start": 0.0, "end": 2.0}]

    config = LMTrainConfig(preset="tiny", steps=3, batch_size=2, context=256, align_weight=1.0, uncond_prob=0.0)
    train_lm(cache, tmp_path / "lm", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "lm" / "train_log.jsonl").read_text().splitlines()]
    assert all(record["align"] > 0 for record in log)


def test_an_unknown_align_unit_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(HeartMuLaError, match="--align-unit 'words'"):
        train_lm(tmp_path / "cache", tmp_path / "lm", LMTrainConfig(align_unit="words"), progress=False)
    assert not (tmp_path / "lm").exists()
