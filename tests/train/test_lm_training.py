"""LM training: the token cache (resume, broken files), the prompt tokenizer, and the trainer end to end on a tiny
random codec (loss falls, checkpoint loads and generates, resume, CFG rows match generation)."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from heartmula.audio import save_audio
from heartmula.codec.pretrained import write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.manifest import write_manifest
from heartmula.train.token_cache import load_cache, read_index, tokenize_manifest

LANGUAGES = {
    "en": "[verse]\nthe night is young and so are we\n[chorus]\nsing it loud",
    "zh": "[verse]\n我们一起唱歌\n[chorus]\n明天会更好",
    "ja": "[verse]\n夜空に星がひかる\n[chorus]\nうたをうたおう",
    "ko": "[verse]\n우리 함께 노래해\n[chorus]\n내일은 더 좋아",
    "es": "[verse]\nla noche es joven\n[chorus]\ncanta conmigo, señor",
}


def _row(item_id, audio, lyrics, language, tags, split, duration):
    return {"id": item_id, "audio": audio, "vocals": None, "lyrics": lyrics, "timing": [], "language": language,
            "tags": tags, "duration": duration, "sample_rate": 16000, "source": {"corpus": "test"},
            "license": "test", "split": split}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Seven songs (five languages + an instrumental as train, one val) of 2-4 s, plus one unreadable file."""
    root = tmp_path_factory.mktemp("lm_corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    items = [*LANGUAGES.items(), (None, ""), ("en", LANGUAGES["en"])]
    for i, (language, lyrics) in enumerate(items):
        seconds = 2.0 + i % 3
        t = np.arange(int(seconds * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * (220 + 55 * i) * t) + 0.02 * rng.standard_normal(t.size)
        save_audio(root / f"audio/s{i}.flac", np.stack([tone, tone]).astype(np.float32), 16000)
        tags = f"pop,piano,{'happy' if i % 2 else 'sad'},{language or 'instrumental'}"
        split = "val" if i == len(items) - 1 else "train"
        rows.append(_row(f"s{i}", f"audio/s{i}.flac", lyrics, language, tags, split, seconds))
    (root / "audio/broken.flac").write_bytes(b"this is not audio")
    rows.insert(3, _row("broken", "audio/broken.flac", "", None, "rock", "train", 1.0))
    write_manifest(root / "manifest.jsonl", rows)
    codec = write_random_codec(root / "codec", "tiny-direct", seed=0)
    return root, codec


@pytest.fixture(scope="module")
def cache(corpus, tmp_path_factory):
    root, codec = corpus
    out = tmp_path_factory.mktemp("cache")
    tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False)
    return out


def test_tokenize_resumes_and_skips_broken_file(corpus, tmp_path):
    root, codec = corpus
    out = tmp_path / "cache"
    first = tokenize_manifest(root / "manifest.jsonl", codec, out, shard_items=2, progress=False, limit=3)
    assert first.encoded == ["s0", "s1", "s2"] and not first.skipped
    second = tokenize_manifest(root / "manifest.jsonl", codec, out, shard_items=2, progress=False)
    assert second.reused == 3
    assert second.encoded == ["s3", "s4", "s5", "s6"]
    assert list(second.skipped) == ["broken"]
    index = read_index(out)
    assert set(index["items"]) == {f"s{i}" for i in range(7)}
    assert list(index["skipped"]) == ["broken"]
    assert index["codec"]["codebook_size"] == 64 and len(index["codec"]["fingerprint"]) == 16
    _, items = load_cache(out)
    for item in items:
        meta = index["items"][item.id]
        assert item.codes.shape == (8, meta["n_frames"])
        assert meta["n_frames"] == int(np.ceil(meta["duration"] * 12.5))  # 80 ms frames, tail padded
        assert 0 <= int(item.codes.min()) and int(item.codes.max()) < 64
    assert items[0].lyrics == LANGUAGES["en"] and items[0].language == "en"
    # A third run has nothing left to do, and a different codec is refused.
    third = tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False)
    assert third.reused == 7 and not third.encoded
    other = write_random_codec(tmp_path / "other", "tiny-direct", seed=1)
    with pytest.raises(HeartMuLaError, match="another codec"):
        tokenize_manifest(root / "manifest.jsonl", other, out, progress=False)


def test_bpe_tokenizer_covers_five_scripts():
    from heartmula.text import TextTokenizer
    from heartmula.train.text_tokenizer import BOS, EOS, prompt_texts, train_bpe_tokenizer

    texts = prompt_texts(["pop,piano", "rock,guitar"], list(LANGUAGES.values()) * 3)
    raw = train_bpe_tokenizer(texts, vocab_size=400)
    tokenizer = TextTokenizer(raw, raw.token_to_id(BOS), raw.token_to_id(EOS))
    assert (tokenizer.bos_id, tokenizer.eos_id) == (0, 1)
    for text in ["unseen words here", "完全没见过的字", "見たことのない文字", "처음 보는 글자", "¿mañana?", "🎵"]:
        ids = tokenizer.encode(text)
        assert ids[0] == 0 and ids[-1] == 1
        assert tokenizer.decode(ids[1:-1]) == text
    # Merges learned from the corpus make its own text shorter than its UTF-8 bytes.
    lyrics = LANGUAGES["zh"].lower()
    assert len(tokenizer.encode(lyrics)) < len(lyrics.encode()) / 2
    tags = tokenizer.encode_tags("pop,piano")
    assert raw.id_to_token(tags[1]) == "<tag>" and raw.id_to_token(tags[-2]) == "</tag>"


def test_tag_augmentation_keeps_the_tag_set():
    from heartmula.train.lm import LMTrainConfig, augment_tags

    config = LMTrainConfig(tag_drop_prob=0.0, all_tags_drop_prob=0.0)
    rng = random.Random(0)
    outs = {augment_tags("pop, piano,happy ,en", rng, config) for _ in range(20)}
    assert all(sorted(o.split(",")) == ["en", "happy", "piano", "pop"] for o in outs)
    assert len(outs) > 1  # shuffled
    assert augment_tags("pop,piano", rng, dataclasses.replace(config, all_tags_drop_prob=1.0)) == ""


def test_cli_defaults_match_the_config():
    from heartmula.cli.train import LM_DEFAULTS
    from heartmula.train.lm import LMTrainConfig

    config = dataclasses.asdict(LMTrainConfig())
    assert {k: config[k] for k in LM_DEFAULTS} == LM_DEFAULTS


def test_training_rows_match_generation_rows(cache, tmp_path):
    """The conditional and unconditional (CFG) training rows embed exactly as the generator's prefill rows."""
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import LMTrainConfig, SampleBuilder, embed_samples, train_lm

    train_lm(cache, tmp_path / "lm", LMTrainConfig(preset="tiny", steps=1, batch_size=1, context=256), False)
    generator = load_generator(tmp_path / "lm")
    _, items = load_cache(cache)
    item = items[1]
    captured = []
    hook = generator.model.backbone.register_forward_pre_hook(lambda m, args, out=captured: out.append(args[0]))
    generator.generate([SongRequest(item.lyrics, item.tags, seed=0)], SamplingParams(cfg_scale=1.5), 0)
    hook.remove()
    prefill = captured[0]  # [2, P, D]: conditional row, unconditional row
    builder = SampleBuilder(generator.tokenizer, generator.gen_config, 8, 256)
    config = LMTrainConfig()
    samples = [builder.build(item, item.tags, 0, None, config, unconditional) for unconditional in (False, True)]
    with torch.no_grad():
        hidden, targets = embed_samples(generator.model, samples)
    p = prefill.shape[1]
    torch.testing.assert_close(hidden[:, :p], prefill)
    assert (targets[0, p - 1 : p - 1 + item.codes.shape[1]] == item.codes[0]).all()  # last prompt row -> frame 0
    assert targets[0, -1] == generator.gen_config.audio_eos_id  # the whole song fits: EOS after its last frame


def test_training_reduces_loss_resumes_and_generates(cache, tmp_path):
    from heartmula.cli import main
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.pretrained import load_generator

    out = tmp_path / "lm"
    args = ["train", "lm", str(cache), "--out", str(out), "--preset", "tiny", "--batch-size", "4", "--context",
            "256", "--lr", "3e-3", "--warmup-steps", "4", "--eval-every", "8", "--save-every", "8", "--quiet"]
    assert main([*args, "--steps", "16"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert (out / "tokenizer.json").is_file() and (out / "gen_config.json").is_file()
    assert json.loads((out / "gen_config.json").read_text())["audio_eos_id"] == 65

    with open(out / "train_log.jsonl", "a") as f:  # as if killed after logging step 17 but before saving it
        f.write(json.dumps({"step": 17, "loss": 99.0}) + "\n")
    assert main([*args, "--steps", "18"]) == 0  # resumes from step 16
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 19)) and 99.0 not in [r["loss"] for r in log]
    assert json.loads((out / "train_state.json").read_text())["step"] == 18

    generator = load_generator(out)
    songs = [SongRequest(LANGUAGES["ko"], "pop,piano", seed=3), SongRequest("", "sad", seed=4)]
    codes = generator.generate(songs, SamplingParams(cfg_scale=1.5), max_new_frames=12)
    for song in codes:
        assert song.shape[0] == 8 and 1 <= song.shape[1] <= 13
        assert int(song.max()) < 64  # only decodable codes


def test_fine_tuning_starts_from_a_trained_model_and_its_tokenizer(cache, tmp_path, capsys):
    from heartmula.cli import main
    from heartmula.lm.pretrained import write_random_root

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    common = ["--preset", "tiny", "--batch-size", "4", "--context", "256", "--warmup-steps", "2", "--eval-every", "4",
              "--save-every", "4", "--quiet"]
    assert main(["train", "lm", str(cache), "--out", str(base), "--lr", "3e-3", "--steps", "12", *common]) == 0
    base_log = [json.loads(line) for line in (base / "train_log.jsonl").read_text().splitlines()]
    assert main(["train", "lm", str(cache), "--out", str(tuned), "--from", str(base), "--lr", "1e-3", "--steps", "4",
                 *common]) == 0
    tuned_log = [json.loads(line) for line in (tuned / "train_log.jsonl").read_text().splitlines()]
    assert (tuned / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    # it starts where the base model ended, not from fresh weights
    assert tuned_log[0]["loss"] < base_log[0]["loss"] - 1.0
    assert tuned_log[3]["val_loss"] < base_log[3]["val_loss"] - 1.0  # both after 4 steps
    recorded = json.loads((tuned / "training_data.json").read_text())["init_from"]
    assert recorded == str((base / "HeartMuLa-oss-3B").resolve())
    assert main(["train", "lm", str(cache), "--out", str(tuned), "--from", str(base), "--steps", "6", *common]) == 0
    assert json.loads((tuned / "training_data.json").read_text())["init_from"] == recorded  # kept on resume

    # models of another codec, or a tokenizer that would not match the embeddings, are refused before any step
    official = write_random_root(tmp_path / "official", "tiny", seed=0)  # 8 codebooks of 8192 codes
    for source, extra, message in ((str(tmp_path / "official"), [], "audio vocabulary"),
                                   ("default", [], "audio vocabulary"),
                                   (str(base), ["--tokenizer", str(base / "tokenizer.json")], "not both")):
        out = tmp_path / f"refused-{len(extra)}-{source == 'default'}"
        assert main(["train", "lm", str(cache), "--out", str(out), "--from", source, "--steps", "1", *extra,
                     *common]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "HeartMuLa-oss-3B").exists() and not (out / "tokenizer.json").exists()
    assert official.is_dir()


# --- the reference-audio slot: CLAP embeddings in the cache, trained in the slot as generation fills it ---


def _tiny_clap(folder, seed):
    from dataclasses import replace

    from heartmula.clap import HeartCLAP, HeartCLAPConfig

    torch.manual_seed(seed)
    HeartCLAP(replace(HeartCLAPConfig.tiny(), embed_dim=512)).save_pretrained(folder)  # 512 = the LM's muq_dim
    return folder


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return _tiny_clap(tmp_path_factory.mktemp("clap"), 0)


@pytest.fixture(scope="module")
def clap_cache(corpus, clap_dir, tmp_path_factory):
    root, codec = corpus
    out = tmp_path_factory.mktemp("clap_cache")
    tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False, clap=clap_dir)
    return out


def test_tokenize_stores_clap_embeddings_and_adds_them_to_old_caches(corpus, clap_dir, tmp_path):
    from heartmula.audio import load_audio
    from heartmula.clap import load_clap

    root, codec = corpus
    out = tmp_path / "cache"
    first = tokenize_manifest(root / "manifest.jsonl", codec, out, shard_items=2, progress=False, limit=3)
    assert first.encoded == ["s0", "s1", "s2"] and not first.embedded  # an old-style cache: codes only
    _, old = load_cache(out)
    assert all(item.reference is None for item in old) and "clap" not in read_index(out)

    second = tokenize_manifest(root / "manifest.jsonl", codec, out, shard_items=2, progress=False, clap=clap_dir)
    assert second.encoded == ["s3", "s4", "s5", "s6"]
    assert second.embedded == [f"s{i}" for i in range(7)]  # old items get theirs without being encoded again
    assert list(second.skipped) == ["broken"]
    index, items = load_cache(out)
    assert index["clap"]["embed_dim"] == 512 and len(index["clap"]["fingerprint"]) == 16
    for before in old:
        assert torch.equal(next(i for i in items if i.id == before.id).codes, before.codes)
    clap = load_clap(clap_dir)
    rows = {r["id"]: r for r in (json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines())}
    for item in items:
        assert item.reference.shape == (512,) and item.reference.dtype == torch.float32
        audio, rate = load_audio(root / rows[item.id]["audio"])
        np.testing.assert_allclose(item.reference.numpy(), clap.embed_audio(audio, rate), atol=1e-5)
    assert not torch.allclose(items[0].reference, items[1].reference)

    third = tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False, clap=clap_dir)
    assert not third.encoded and not third.embedded and third.reused == 7
    _, again = load_cache(out, split="val")
    assert [i.id for i in again] == ["s6"] and again[0].reference is not None
    other = _tiny_clap(tmp_path / "other-clap", 1)
    with pytest.raises(HeartMuLaError, match="another model"):
        tokenize_manifest(root / "manifest.jsonl", codec, out, progress=False, clap=other)


def test_training_rows_with_and_without_reference_match_generation(clap_cache, tmp_path):
    """Conditional rows with and without a reference, and the CFG row, embed exactly as the generator's prefill."""
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.pretrained import load_generator
    from heartmula.train.lm import LMTrainConfig, SampleBuilder, embed_samples, train_lm

    train_lm(clap_cache, tmp_path / "lm", LMTrainConfig(preset="tiny", steps=1, batch_size=2, context=256), False)
    generator = load_generator(tmp_path / "lm")
    _, items = load_cache(clap_cache)
    item = items[2]
    builder = SampleBuilder(generator.tokenizer, generator.gen_config, 8, 256)
    config = LMTrainConfig()
    embedded = {}
    for name, reference in (("with", item.reference), ("without", None)):
        captured = []
        hook = generator.model.backbone.register_forward_pre_hook(lambda m, args, out=captured: out.append(args[0]))
        song = SongRequest(item.lyrics, item.tags, reference_embedding=reference, seed=0)
        generator.generate([song], SamplingParams(cfg_scale=1.5), 0)
        hook.remove()
        prefill = captured[0]  # [2, P, D]: conditional row, unconditional row
        # The CFG sample is given the reference too: the builder must drop it, as the generator's null row does.
        samples = [builder.build(item, item.tags, 0, None, config, unconditional, reference)
                   for unconditional in (False, True)]
        tokens, mask, slot = generator.build_prompt(item.tags, item.lyrics)
        p = len(tokens)
        assert samples[0].slot == slot and torch.equal(samples[0].tokens[:p], tokens)
        assert torch.equal(samples[0].mask[:p], mask)
        with torch.no_grad():
            hidden, _ = embed_samples(generator.model, samples)
        torch.testing.assert_close(hidden[:, :p], prefill)
        embedded[name] = hidden
    # The reference changes the conditional row's slot and nothing else.
    differs = (embedded["with"] - embedded["without"]).abs().amax(dim=-1) > 1e-6
    assert differs[0].nonzero().flatten().tolist() == [slot] and not differs[1].any()


def test_training_with_references_reduces_loss_and_trains_the_slot(clap_cache, tmp_path):
    from heartmula.cli import main
    from heartmula.lm.generation import SamplingParams, SongRequest
    from heartmula.lm.model import HeartMuLa
    from heartmula.lm.pretrained import load_generator

    out = tmp_path / "lm"
    args = ["train", "lm", str(clap_cache), "--out", str(out), "--preset", "tiny", "--batch-size", "4", "--context",
            "256", "--lr", "3e-3", "--warmup-steps", "4", "--eval-every", "8", "--save-every", "8", "--quiet",
            "--reference-prob", "0.5"]
    assert main([*args, "--steps", "0"]) == 0  # saves the initial weights
    initial = HeartMuLa.from_pretrained(out / "HeartMuLa-oss-3B").muq_linear.weight.detach().clone()
    assert main([*args, "--steps", "16"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0
    assert 0 < sum(r["references"] for r in log) < 4 * 16  # about half the conditional samples
    refs = [r["val_ref_loss"] for r in log if "val_ref_loss" in r]
    assert len(refs) == 2 and refs[-1] < refs[0]
    data = json.loads((out / "training_data.json").read_text())
    assert data["train_items_with_reference"] == 6 and data["reference_prob"] == 0.5
    assert data["clap"]["fingerprint"] == read_index(clap_cache)["clap"]["fingerprint"]
    generator = load_generator(out)
    trained = generator.model.muq_linear.weight.detach()
    cosine = float((trained * initial).sum() / (trained.norm() * initial.norm()))
    assert cosine < 0.99  # the slot's projection learned from the embeddings (weight decay alone keeps cosine 1)
    _, items = load_cache(clap_cache)
    song = SongRequest(items[0].lyrics, items[0].tags, reference_embedding=items[0].reference, seed=1)
    codes = generator.generate([song], SamplingParams(cfg_scale=1.5), max_new_frames=6)[0]
    assert codes.shape[0] == 8 and 1 <= codes.shape[1] <= 7 and int(codes.max()) < 64


def test_old_cache_without_embeddings_trains_with_an_empty_slot(cache, tmp_path):
    from heartmula.lm.model import HeartMuLa
    from heartmula.train.lm import LMTrainConfig, train_lm

    config = LMTrainConfig(preset="tiny", steps=0, batch_size=2, context=256, learning_rate=3e-3, warmup_steps=1,
                           reference_prob=1.0, eval_every=4)
    train_lm(cache, tmp_path / "lm", config, False)
    initial = HeartMuLa.from_pretrained(tmp_path / "lm/HeartMuLa-oss-3B").muq_linear.weight.detach().clone()
    report = train_lm(cache, tmp_path / "lm", dataclasses.replace(config, steps=4), False)
    assert report.last_loss is not None and "val_ref_loss" not in report.validation[-1]
    trained = HeartMuLa.from_pretrained(tmp_path / "lm/HeartMuLa-oss-3B").muq_linear.weight.detach()
    # Zeros in the slot: the projection gets no gradient, only weight decay shrinks it.
    torch.testing.assert_close(trained, initial * (trained.norm() / initial.norm()))
    data = json.loads((tmp_path / "lm/training_data.json").read_text())
    assert data["train_items_with_reference"] == 0 and data["clap"] is None


def test_reference_dimension_must_match_the_slot(corpus, tmp_path):
    from heartmula.clap import HeartCLAP, HeartCLAPConfig
    from heartmula.train.lm import LMTrainConfig, train_lm

    root, codec = corpus
    torch.manual_seed(0)
    HeartCLAP(HeartCLAPConfig.tiny()).save_pretrained(tmp_path / "clap32")  # 32-d embeddings
    tokenize_manifest(root / "manifest.jsonl", codec, tmp_path / "cache", progress=False, limit=2,
                      clap=tmp_path / "clap32")
    with pytest.raises(HeartMuLaError, match="reference slot takes 512"):
        train_lm(tmp_path / "cache", tmp_path / "lm", LMTrainConfig(preset="tiny", steps=1, context=256), False)
