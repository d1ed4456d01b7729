"""`heartmula data variants` on the tiny real corpus: the accompaniment and first-lines variants of the sung songs."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.audio import load_audio
from heartmula.cli import main
from heartmula.data.variants import FADE_SECONDS, VariantConfig, make_lyric_variants
from heartmula.errors import HeartMuLaError
from heartmula.manifest import parse_lyrics_sections, read_manifest

QUANTUM = 2 / 2**15  # two 16-bit steps: the mix and the stem were each rounded once


@pytest.fixture(scope="module")
def variants(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    code = main(["data", "variants", str(tiny_corpus), "--out", str(out), "--splits", "train,val,test",
                 "--max-kept-lines", "2", "--quiet"])
    assert code == 0
    return out


def test_variants_keep_tags_and_change_only_lyrics_and_voice(tiny_corpus, variants):
    originals = {r["id"]: r for r in read_manifest(tiny_corpus)}
    rows = read_manifest(variants)
    by_id = {r["id"]: r for r in rows}
    sung = [r for r in originals.values() if r["vocals"]]
    assert len(sung) >= 2
    assert set(by_id) == set(originals) | {f"{r['id']}-{kind}" for r in sung for kind in ("inst", "lines")}
    for item_id, original in originals.items():  # the originals are listed unchanged, their audio found
        assert by_id[item_id]["audio"] == original["audio"] and by_id[item_id]["lyrics"] == original["lyrics"]
    for original in sung:
        mix, rate = load_audio(original["audio"])
        stem, _ = load_audio(original["vocals"])
        inst, lines = by_id[f"{original['id']}-inst"], by_id[f"{original['id']}-lines"]
        assert inst["tags"] == lines["tags"] == original["tags"]
        assert inst["lyrics"] == "" and inst["timing"] == [] and inst["vocals"] is None
        accompaniment, _ = load_audio(inst["audio"])
        assert np.abs(accompaniment + stem - mix).max() <= QUANTUM  # the voice, and only the voice, removed
        assert np.sqrt(np.mean(stem**2)) > 10 * np.sqrt(np.mean((accompaniment + stem - mix) ** 2))

        kept = lines["variant"]["kept_lines"]
        assert 1 <= kept <= min(2, len(original["timing"]) - 1)
        assert lines["timing"] == original["timing"][:kept]
        sung_lines = [line for _, group in parse_lyrics_sections(lines["lyrics"]) for line in group]
        assert sung_lines == [line["text"] for line in original["timing"][:kept]]
        voice, _ = load_audio(lines["vocals"])
        cut = int(round(original["timing"][kept - 1]["end"] * rate))
        fade = int(FADE_SECONDS * rate)
        assert np.abs(voice[:, :cut] - stem[:, :cut]).max() <= QUANTUM  # sung as before up to the last kept line
        assert np.abs(voice[:, cut + fade :]).max() == 0.0  # silent after it ...
        assert np.abs(stem[:, cut + fade :]).max() > 0.01  # ... where the original goes on singing
        mixed, _ = load_audio(lines["audio"])
        assert np.abs(mixed - accompaniment - voice).max() <= QUANTUM


def test_rerun_resumes_without_rewriting(tiny_corpus, variants):
    audio = sorted((variants / "audio").glob("*.flac"))
    stamps = [path.stat().st_mtime_ns for path in audio]
    (variants / "manifest.jsonl").unlink()
    rows = make_lyric_variants(VariantConfig(tiny_corpus, variants, splits=("train", "val", "test"),
                                             max_kept_lines=2, progress=False))
    assert [path.stat().st_mtime_ns for path in audio] == stamps
    assert len(read_manifest(variants)) == len(rows)
    # another seed keeps other line counts: each row must name audio cut after its own last line
    reseeded = make_lyric_variants(VariantConfig(tiny_corpus, variants, seed=5, splits=("train", "val", "test"),
                                                 max_kept_lines=4, progress=False))
    for row in (r for r in reseeded if r.get("variant", {}).get("kind") == "first-lines"):
        voice, rate = load_audio(variants / row["vocals"])
        cut = int(round((row["timing"][-1]["end"] + FADE_SECONDS) * rate))
        assert np.abs(voice[:, cut:]).max() == 0.0 and np.abs(voice[:, :cut]).max() > 0.01


def test_bad_requests_are_clear_errors(tiny_corpus, tmp_path):
    with pytest.raises(HeartMuLaError, match="new folder"):
        make_lyric_variants(VariantConfig(tiny_corpus, tiny_corpus, progress=False))
    with pytest.raises(HeartMuLaError, match="--splits"):
        make_lyric_variants(VariantConfig(tiny_corpus, tmp_path / "v", splits=("training",), progress=False))
    with pytest.raises(HeartMuLaError, match="no manifest"):
        make_lyric_variants(VariantConfig(tmp_path, tmp_path / "v", progress=False))
    assert not (tmp_path / "v").exists()


def test_the_vad_hears_the_voice_the_accompaniment_variant_lost(tiny_corpus, variants):
    from heartmula.transcribe.pipeline import voiced_seconds

    rows = {r["id"]: r for r in read_manifest(variants)}
    sung = [r for r in rows.values() if r["vocals"] and "variant" not in r]
    heard = {kind: sum(voiced_seconds(*load_audio(rows[r["id"] + suffix]["audio"])) for r in sung)
             for kind, suffix in (("original", ""), ("accompaniment", "-inst"))}
    total = sum(r["duration"] for r in sung)
    assert heard["original"] > 0.3 * total and heard["accompaniment"] < 0.1 * total, (heard, total)
