"""HeartCLAP training: a tiny model learns (loss goes down, held-out metrics logged), resumes, skips bad audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartmula.clap import HeartCLAP
from heartmula.clap.prompts import tags_prompt
from heartmula.train.clap import ClapTrainConfig, multi_positive_nce, positives, train_clap


def test_multi_positive_targets():
    from heartmula.clap.data import Item

    def item(tags):
        return Item("x", frozenset(tags), list(tags), "", np.zeros((1, 1)), np.zeros((1, 1)))

    items = [item({"pop", "piano"}), item({"rock", "piano"}), item({"pop", "drums"})]
    pos = positives([frozenset({"piano"}), frozenset(), frozenset({"pop", "drums"})], items)
    assert pos.tolist() == [[True, True, False], [False, True, False], [False, False, True]]
    perfect = torch.where(pos, 10.0, -10.0)
    assert multi_positive_nce(perfect, pos) < multi_positive_nce(-perfect, pos)


def test_tiny_training_lowers_the_loss_resumes_and_skips_bad_audio(synthetic_corpus, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    config = ClapTrainConfig(preset="tiny", steps=24, batch_size=6, learning_rate=3e-3, warmup_steps=3,
                             eval_every=12, save_every=12, seed=0)
    report = train_clap([synthetic_corpus], out, config, progress=False)
    assert report["steps"] == 24 and report["train_items"] == 8 and report["held_out_items"] == 2
    assert [item_id for item_id, _ in report["skipped"]] == ["broken"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) * 0.8
    assert "t2a_R@1" in log[11] and "a2t_mAP@10" in log[-1]
    # the trained tiny model tells tones from noise by description
    model = HeartCLAP.from_pretrained(out)
    from heartmula.audio import load_audio

    tone, rate = load_audio(synthetic_corpus / "audio" / "s8.flac")
    noise, _ = load_audio(synthetic_corpus / "audio" / "s9.flac")
    text = model.embed_text([tags_prompt(["classical", "piano", "slow", "calm"]),
                             tags_prompt(["rock", "drums", "fast", "intense"])])
    audio = np.stack([model.embed_audio(tone, rate), model.embed_audio(noise, rate)])
    sim = text @ audio.T
    assert sim[0, 0] > sim[0, 1] and sim[1, 1] > sim[1, 0]
    # resuming continues from the saved step
    config.steps = 26
    again = train_clap([synthetic_corpus], out, config, progress=False)
    assert again["resumed_from"] == 24 and again["steps"] == 26
    # a text-only stage moves the text projection and leaves the audio tower as it was
    before = HeartCLAP.from_pretrained(out).state_dict()
    config.steps, config.text_only, config.align_weight = 30, True, 4.0
    train_clap([synthetic_corpus], out, config, progress=False)
    after = HeartCLAP.from_pretrained(out).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("audio."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    assert (out / "fixed_audio.npz").is_file()
    assert "spread" in json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])


def test_cross_lingual_loss_pulls_translations_together(tiny_clap_dir):
    import random

    from heartmula.clap.prompts import LANGUAGES
    from heartmula.train.clap import aligned_prompts, cross_lingual_spread

    same = torch.nn.functional.normalize(torch.randn(3, 1, 8), dim=-1).expand(3, len(LANGUAGES), 8)
    assert cross_lingual_spread(same).item() < 1e-6
    assert cross_lingual_spread(torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=-1)).item() > 0.1

    tag_sets = [frozenset({"piano", "slow"}), frozenset(), frozenset({"rock", "drums", "fast"}),
                frozenset({"organ", "hymn", "calm"}), frozenset({"sad", "violin"})]
    prompts = aligned_prompts(tag_sets, random.Random(0), 3)
    assert len(prompts) == 3 * len(LANGUAGES)  # the tagless (lyrics) prompt is never chosen
    assert "piano" in " ".join(prompts) or "rock" in " ".join(prompts) or "organ" in " ".join(prompts)
    # only the text projection learns, on the loss alone: translations move onto one point
    model = HeartCLAP.from_pretrained(tiny_clap_dir).train()
    sentences = model.encode_sentences(aligned_prompts(tag_sets, random.Random(1), 4))
    optimizer = torch.optim.Adam(model.text.parameters(), lr=1e-2)

    def spread():
        text = model.text_embedding(sentences)
        return cross_lingual_spread(text.view(-1, len(LANGUAGES), text.shape[-1]))

    before = spread().item()
    for _ in range(40):
        optimizer.zero_grad()
        spread().backward()
        optimizer.step()
    assert spread().item() < 0.25 * before


def _train_tiny(corpus, out, steps, **placement) -> np.ndarray:
    config = ClapTrainConfig(preset="tiny", steps=steps, batch_size=6, learning_rate=3e-3, warmup_steps=1,
                             eval_every=4, save_every=2, seed=0, **placement)
    train_clap([corpus], out, config, progress=False)
    return np.array([row["loss"] for row in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())])


def test_training_on_the_cpu_in_bfloat16_and_float32(synthetic_corpus, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    default = _train_tiny(synthetic_corpus, tmp_path / "default", 3)
    cpu = _train_tiny(synthetic_corpus, tmp_path / "cpu", 3, device="cpu", precision="float32")
    np.testing.assert_array_equal(cpu, default)
    mixed = _train_tiny(synthetic_corpus, tmp_path / "bf16", 3, device="cpu", precision="bfloat16")
    assert np.isfinite(mixed).all() and not np.array_equal(mixed, cpu)
    np.testing.assert_allclose(mixed, cpu, rtol=0.05)
    weights = load_file(str(tmp_path / "bf16" / "model.safetensors")).values()
    assert {t.dtype for t in weights if t.is_floating_point()} == {torch.float32}
    resumed = _train_tiny(synthetic_corpus, tmp_path / "bf16", 4, device="cpu", precision="bfloat16")
    assert len(resumed) == 4 and np.isfinite(resumed).all()
    HeartCLAP.from_pretrained(tmp_path / "bf16").embed_text("piano")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_saves_cpu_tensors_and_resumes_on_the_cpu(synthetic_corpus, tmp_path):
    losses = _train_tiny(synthetic_corpus, tmp_path / "run", 4, device="cuda")
    assert np.isfinite(losses).all()
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert all(v.device.type == "cpu" for slots in state["optimizer"]["state"].values() for v in slots.values())
    resumed = _train_tiny(synthetic_corpus, tmp_path / "run", 6, device="cpu")
    assert len(resumed) == 6 and np.isfinite(resumed).all()
