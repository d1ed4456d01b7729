"""`heartmula eval report` end to end on tiny random-weight models, and its measuring parts on synthetic signals."""

import json
import math

import numpy as np
import pytest

from heartmula.audio import load_audio, save_audio
from heartmula.cli import main
from heartmula.codec.pretrained import write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.eval.report import (
    INSTRUMENTAL,
    LANGUAGES,
    PROMPTS,
    estimate_tempo,
    pairwise_win_rate,
    select_prompts,
    shuffled_partners,
    spectral_flatness,
)
from heartmula.lm.config import GenerationConfig, HeartMuLaConfig
from heartmula.lm.model import HeartMuLa
from heartmula.lm.pretrained import write_random_root

SECTIONS = ("## 1. Songs", "## 2. Lyric error rate", "## 3. Tag adherence", "## 4. Codec reconstruction",
            "## 5. Speed")


def write_tiny_models(root):
    """A tiny random LM whose codes the tiny-harmonic codec decodes: 4 codebooks of 64 codes (+5 specials, EOS
    right after the codebook, as the LM trainer lays them out), the codec beside it in the official layout."""
    model_dir = write_random_root(root, "tiny", seed=0)
    config = HeartMuLaConfig.from_file(model_dir / "config.json")
    config.audio_num_codebooks, config.audio_vocab_size = 4, 64 + 5
    HeartMuLa(config).init_weights(0).save_pretrained(model_dir)
    gen_config = GenerationConfig.from_file(root / "gen_config.json")
    gen_config.audio_eos_id = 65
    gen_config.save(root / "gen_config.json")
    write_random_codec(root / "HeartCodec-oss", "tiny-harmonic", seed=0)
    return root


def click_track(bpm: float, rate: int, seconds: float = 12.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    audio = np.zeros(int(seconds * rate))
    for k in range(int(seconds * bpm / 60)):
        start = int(k * 60 / bpm * rate)
        burst = audio[start:start + int(0.03 * rate)]
        burst += rng.standard_normal(len(burst)) * np.exp(-np.arange(len(burst)) / (0.005 * rate))
    return audio


def pluck_track(bpm: float, rate: int, seconds: float = 12.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return sum(np.sin(2 * np.pi * 196 * h * t) / h for h in range(1, 8)) * np.exp(-6 * (t % (60 / bpm)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_tiny_models(tmp_path_factory.mktemp("report_models"))


@pytest.fixture(scope="module")
def report_run(models, tmp_path_factory):
    """One quick report (en + ko + an instrumental, 4 s songs) with a corpus ceiling and a codec round trip."""
    work = tmp_path_factory.mktemp("report_run")
    rate = 16000
    t = np.arange(3 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-3 * (t % 0.5))).astype(np.float32)
    save_audio(work / "held_out.flac", tone[None], rate)
    # A two-song corpus: a slow piano song (plucks at 70 BPM) and a fast one with drums (noise bursts at 140 BPM).
    corpus = work / "corpus"
    rows = []
    for name, bpm, tags, drums in (("slow", 70, "ballad,piano,calm,slow,female vocal,english", False),
                                   ("fast", 140, "rock,electric guitar,drums,energetic,fast,male vocal,english", True)):
        audio = click_track(bpm, rate, 6.0) if drums else pluck_track(bpm, rate, 6.0)
        audio = (0.5 * audio / np.abs(audio).max()).astype(np.float32)[None]
        save_audio(corpus / "audio" / f"{name}.flac", audio, rate)
        save_audio(corpus / "vocals" / f"{name}.flac", tone[None], rate)
        rows.append({"id": name, "audio": f"audio/{name}.flac", "vocals": f"vocals/{name}.flac",
                     "lyrics": "[verse]\nhello world", "language": "en", "tags": tags, "duration": 6.0,
                     "timing": [{"section": "verse", "text": "hello world", "start": 0.0, "end": 2.0,
                                 "syllables": []}], "sample_rate": rate, "source": {}, "license": "test",
                     "split": "test", "tempo_bpm": bpm, "vocal_gender": "female"})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = work / "report"
    code = main(["eval", "report", "--out", str(out), "--model", str(models), "--quick", "--duration", "4",
                 "--languages", "en,ko,instrumental", "--threads", "1", "--corpus", str(corpus), "--ceiling-items",
                 "1", "--codec-audio", str(work / "held_out.flac"), "--quiet"])
    assert code == 0
    return out


def test_report_has_every_section_and_file(report_run):
    markdown = (report_run / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in markdown, section
    report = json.loads((report_run / "report.json").read_text(encoding="utf-8"))
    assert set(report) >= {"songs", "lyrics", "tags", "codec", "speed", "models", "settings"}
    assert [s["id"] for s in report["songs"]] == ["en-ballad", "ko-electronic", "inst-ballad"]
    for song in report["songs"]:
        assert (report_run / song["audio"]).is_file() and f"]({song['audio']})" in markdown
        assert 0 < song["seconds"] <= 4.2
    for plot in ("lyrics", "clap", "signal"):
        assert (report_run / "plots" / f"{plot}.png").stat().st_size > 1000
        assert f"(plots/{plot}.png)" in markdown
    assert (report_run / report["codec"]["files"][0]["plot"]).is_file()
    assert (report_run / "ceiling.json").is_file()
    assert not list(report_run.parent.glob(".report.*"))  # no temporary folder left behind


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_report_numbers_are_finite_and_measured(report_run):
    report = json.loads((report_run / "report.json").read_text(encoding="utf-8"))
    assert all(math.isfinite(x) for x in _numbers(report))
    lyrics = report["lyrics"]["languages"]
    assert set(lyrics) == {"en", "ko"}
    assert lyrics["en"]["unit"] == "wer" and lyrics["ko"]["unit"] == "cer"
    assert lyrics["en"]["error_rate"] >= 0 and lyrics["en"]["ceiling"] >= 0  # the ceiling of the 1-item corpus
    assert "ko" not in json.loads((report_run / "ceiling.json").read_text(encoding="utf-8"))  # corpus has no ko
    for song in report["songs"]:
        assert song["clap_own"] is not None and -1 <= song["clap_own"] <= 1
        assert song["tempo_bpm"] is not None and 50 <= song["tempo_bpm"] <= 220
        assert song["spectral_flatness"] is not None and 0 <= song["spectral_flatness"] <= 1
        assert ("transcript" in song) == (song["language"] is not None)
    assert report["tags"]["clap"]["songs"] == 3
    # the vocal prompts again with empty lyrics, measured only for the singing contrast
    twins = report["songs_without_lyrics"]
    assert [s["id"] for s in twins] == ["en-ballad-nolyrics", "ko-electronic-nolyrics"]
    assert all(s["lyrics"] == "" and (report_run / s["audio"]).is_file() and "transcript" not in s for s in twins)
    for song in report["songs"] + twins:
        assert 0 <= song["voiced_seconds"] <= song["seconds"] + 0.01
    singing = report["lyrics"]["singing"]
    assert singing["pairs"] == 2 and singing["with_lyrics_mean"] == np.mean(
        [s["voiced_seconds"] for s in report["songs"] if s["language"]])
    assert 0 <= singing["with_lyrics_share"] <= 1.01 and 0 <= singing["without_lyrics_share"] <= 1.01
    assert report["tags"]["tempo"]["groups"]["slow"]["songs"] == 2
    assert report["tags"]["drums"]["groups"]["drums"]["songs"] == 1
    metrics = report["codec"]["files"][0]["metrics"]
    assert all(metrics[k] is not None for k in ("mrstft", "mel_distance", "si_sdr_db", "loudness_diff_lu"))
    speed = report["speed"]
    assert speed["threads"] == 1 and speed["lm_rtf"] > 0 and speed["decode_rtf"] > 0
    assert speed["audio_seconds"] == pytest.approx(sum(s["seconds"] for s in report["songs"]))


def test_corpus_reference_runs_the_same_measures_on_real_songs(report_run):
    report = json.loads((report_run / "report.json").read_text(encoding="utf-8"))
    reference = report["tags"]["corpus_reference"]
    assert reference["songs"] == 2 and reference["clap"]["songs"] == 2
    # the synthetic corpus songs are what their tags say: the measures must separate them perfectly
    assert reference["tempo"]["win_rate"] == 1.0 and reference["drums"]["win_rate"] == 1.0
    assert reference["tempo_exact"] == 1.0
    assert reference["text_search"]["prompts"] == 2 and 0 <= reference["text_search"]["mean_win_rate"] <= 1
    coded = reference["codec_round_trip"]  # the same songs through the (random tiny) codec: measured, not copied
    assert coded["clap"]["songs"] == 2 and coded["text_search"]["prompts"] == 2
    assert [s["id"] for s in coded["items"]] == [s["id"] for s in reference["items"]]
    assert all(a["clap_own"] != b["clap_own"] for a, b in zip(coded["items"], reference["items"]))
    search = report["tags"]["text_search"]
    assert search["prompts"] == 3 and search["songs"] == 3 and 0 <= search["mean_win_rate"] <= 1
    assert "corpus songs (reference)" in (report_run / "report.md").read_text(encoding="utf-8")


def test_sung_language_is_measured_on_vocal_songs_and_the_corpus(report_run):
    report = json.loads((report_run / "report.json").read_text(encoding="utf-8"))
    sung = report["lyrics"]["sung_language"]
    vocal = [s for s in report["songs"] if s["language"]]
    assert sung["songs"] == len(vocal) == 2 and sung["chance"] == pytest.approx(0.2)
    assert sung["correct"] == sum(s["heard_language"] == s["language"] for s in vocal)
    assert set(sung["by_language"]) == {"en", "ko"}
    assert all(s["heard_language"] in (None, *LANGUAGES) for s in vocal)
    reference = report["tags"]["corpus_reference"]
    for summary in (reference["sung_language"], reference["codec_round_trip"]["sung_language"]):
        assert summary["songs"] == 2 and set(summary["by_language"]) == {"en"}
    markdown = (report_run / "report.md").read_text(encoding="utf-8")
    assert "**Sung language.**" in markdown and "| language heard |" in markdown


def test_sung_language_summary_counts_agreement():
    from heartmula.eval.report import sung_language_summary

    items = [{"language": "en", "heard_language": "en"}, {"language": "en", "heard_language": "es"},
             {"language": "zh", "heard_language": None}, {"language": None, "heard_language": "en"}]
    summary = sung_language_summary(items)
    assert summary["songs"] == 3 and summary["correct"] == 1 and summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["by_language"] == {"en": {"songs": 2, "correct": 1}, "zh": {"songs": 1, "correct": 0}}
    assert sung_language_summary([])["accuracy"] is None


def test_shuffled_baseline_uses_other_prompts_tags(report_run):
    report = json.loads((report_run / "report.json").read_text(encoding="utf-8"))
    tags = {s["id"]: s["tags"] for s in report["songs"]}
    for song in report["songs"]:
        assert song["shuffled_from"] != song["id"]
        assert song["shuffled_tags"] == tags[song["shuffled_from"]] != song["tags"]
    # over the whole prompt set too, and with nothing to shuffle against there is no baseline
    prompts = list(PROMPTS)
    partners = shuffled_partners([p.tags for p in prompts])
    assert all(j is not None and j != i and prompts[j].tags != prompts[i].tags for i, j in enumerate(partners))
    assert len(set(partners)) == len(prompts)  # a permutation: every prompt's tags serve once
    assert shuffled_partners(["pop,piano"]) == [None]
    assert shuffled_partners(["pop,piano", "piano, pop", "rock"]) == [2, 2, 0]  # same tags are no baseline


def test_text_search_compares_each_prompt_with_itself(monkeypatch):
    import heartmula.eval.report as report_module
    from heartmula.eval.report import text_search_summary

    axes = {"a": 0, "b": 1, "c": 2}
    monkeypatch.setattr(report_module, "tags_embedding",
                        lambda tags, model=None, language="en": np.eye(3)[axes[tags.split(",")[0].strip()]])
    # prompt a's text also sits close to every song (a bias that would tip an own-vs-shuffled comparison)
    songs = [np.array([1.0, 0.1, 0.0]), np.array([0.9, 0.0, 0.1]),  # two songs (seeds) of prompt a
             np.array([0.8, 0.9, 0.0]), np.array([0.0, 1.0, 0.2]),  # of b
             np.array([0.7, 0.0, 1.0]), np.array([0.6, 0.3, 0.8])]  # of c
    tags = ["a,x", "x, a", "b", "b", "c", "c"]  # the same tag set in another order is the same prompt
    summary = text_search_summary(songs, tags, clap=None)
    assert summary["prompts"] == 3 and summary["songs"] == 6
    assert summary["mean_win_rate"] == 1.0 and summary["above_chance"] == 1.0 and summary["top1"] == 1.0
    assert summary["top1_chance"] == pytest.approx(1 / 3)
    swapped = text_search_summary(songs[2:4] + songs[:2] + songs[4:], tags, clap=None)  # a's and b's songs swapped
    assert swapped["mean_win_rate"] < 0.6 and swapped["top1"] == pytest.approx(1 / 3)
    assert text_search_summary(songs[:2], tags[:2], clap=None) == {"prompts": 0}


@pytest.mark.parametrize("rate", [4800, 24000])
def test_tempo_estimator_recovers_click_tracks(rate):
    for bpm in (90.0, 140.0):
        assert estimate_tempo(click_track(bpm, rate), rate) == pytest.approx(bpm, rel=0.02)
    assert math.isnan(estimate_tempo(np.zeros(rate * 4), rate))


def test_flatness_separates_plucked_tone_from_noise_bursts():
    rate = 24000
    t = np.arange(6 * rate) / rate
    pluck = sum(np.sin(2 * np.pi * 196 * h * t) / h for h in range(1, 8)) * np.exp(-4 * (t % 0.5))
    noise = np.random.default_rng(1).standard_normal(t.size) * np.exp(-30 * (t % 0.5))
    assert spectral_flatness(pluck, rate) < 0.05 < 0.3 < spectral_flatness(noise, rate)
    mixed = pluck / np.abs(pluck).max() + 0.5 * noise / np.abs(noise).max()  # a band with drums sits in between
    assert spectral_flatness(pluck, rate) < spectral_flatness(mixed, rate) < spectral_flatness(noise, rate)
    assert pairwise_win_rate([0.3, 0.4], [0.1, 0.2]) == 1.0 and pairwise_win_rate([1.0], [1.0]) == 0.5


def test_prompt_set_is_fixed_and_uses_the_corpus_vocabulary():
    from heartmula.clap import known_tags

    vocabulary = set(known_tags())
    assert len({p.id for p in PROMPTS}) == len({p.tags for p in PROMPTS}) == len(PROMPTS)
    for prompt in PROMPTS:
        assert set(prompt.tag_list) <= vocabulary, prompt.id
        assert prompt.tempo in ("slow", "moderate", "fast")
        if prompt.language is None:
            assert prompt.lyrics == "" and "instrumental" in prompt.tag_list
        else:
            assert "[verse]" in prompt.lyrics and "[chorus]" in prompt.lyrics
    for group in (*LANGUAGES, None):
        assert sum(p.language == group for p in PROMPTS) >= 2
    quick = select_prompts(quick=True)
    assert [p.language for p in quick] == [*LANGUAGES, None]
    assert {p.tempo for p in quick} == {"slow", "fast"} and {p.drums for p in quick} == {True, False}
    assert [p.id for p in select_prompts(f"ja, {INSTRUMENTAL}")] == [
        p.id for p in PROMPTS if p.language in ("ja", None)]


@pytest.mark.parametrize("languages", ["en,fr", "", "english", " , "])
def test_bad_languages_give_a_clear_error(languages, tmp_path, capsys):
    with pytest.raises(HeartMuLaError, match="--languages takes a comma-separated subset of en,zh,ja,ko,es"):
        select_prompts(languages)
    out = tmp_path / "report"
    assert main(["eval", "report", "--out", str(out), "--model", str(tmp_path), "--languages", languages]) == 2
    assert "--languages" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_a_foreign_folder_and_leaves_no_half_report(models, tmp_path, monkeypatch, capsys):
    import heartmula.eval.report as report_module

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine", encoding="utf-8")
    assert main(["eval", "report", "--out", str(foreign), "--model", str(models), "--quick", "--quiet"]) == 2
    assert "holds no report" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]

    def crash(*args, **kwargs):
        raise HeartMuLaError("simulated failure while measuring")

    monkeypatch.setattr(report_module, "_measure", crash)
    out = tmp_path / "report"
    assert main(["eval", "report", "--out", str(out), "--model", str(models), "--quick", "--duration", "1",
                 "--languages", "en", "--threads", "1", "--quiet"]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == [foreign]  # songs were made, but nothing is published


def test_a_song_the_lm_ends_at_once_is_reported_not_fatal(models, tmp_path, monkeypatch):
    import torch

    from heartmula.lm.generation import HeartMuLaGenerator

    monkeypatch.setattr(HeartMuLaGenerator, "generate", lambda self, songs, *a, **k: [torch.zeros(4, 0)] * len(songs))
    out = tmp_path / "report"
    assert main(["eval", "report", "--out", str(out), "--model", str(models), "--quick", "--duration", "1",
                 "--languages", "instrumental", "--threads", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    (song,) = report["songs"]
    assert song["frames"] == 0 and song["seconds"] == 0 and song["rms_dbfs"] is None
    assert report["speed"]["lm_rtf"] is None  # no audio: no real-time factor, rather than a division by zero


def test_several_seeds_per_prompt_make_several_songs_and_prompt_level_statistics(models, tmp_path):
    out = tmp_path / "report"
    assert main(["eval", "report", "--out", str(out), "--model", str(models), "--quick", "--duration", "1",
                 "--languages", "en,instrumental", "--seed", "3", "--seeds", "2", "--threads", "1",
                 "--no-lyrics-contrast", "--lyrics-scale", "3", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["songs_without_lyrics"] == [] and report["lyrics"]["singing"] is None
    assert "--no-lyrics-contrast" in report["command"] and "--lyrics-scale 3" in report["command"]
    assert report["settings"]["sampling"]["lyrics_scale"] == 3
    songs = report["songs"]
    assert [(s["id"], s["prompt"], s["seed"]) for s in songs] == [
        ("en-ballad-seed3", "en-ballad", 3), ("en-ballad-seed4", "en-ballad", 4),
        ("inst-ballad-seed3", "inst-ballad", 3), ("inst-ballad-seed4", "inst-ballad", 4)]
    assert all((out / s["audio"]).is_file() for s in songs)
    assert not np.array_equal(*(load_audio(out / s["audio"])[0] for s in songs[:2]))  # two draws, not one twice
    # the CLAP statistics count prompts, each the mean of its two songs
    clap = report["tags"]["clap"]
    assert clap["songs"] == 2 and report["tags"]["songs_per_prompt"] == 2
    assert clap["own_mean"] == pytest.approx(np.mean([s["clap_own"] for s in songs]))
    assert report["tags"]["tempo"]["groups"]["slow"]["songs"] == 2  # two slow prompts, not four songs
    assert report["lyrics"]["languages"]["en"]["songs"] == 2  # lyric errors pool every song
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert report["settings"]["seeds"] == 2 and "seeds 3-4" in markdown and "lyrics guidance 3," in markdown


def test_zero_seeds_is_a_clear_error(models, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", "report", "--out", str(out), "--model", str(models), "--seeds", "0", "--quiet"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err and not out.exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "report", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--model", "--codec", "--version", "--duration", "--languages", "--seeds", "--threads",
                   "--quick", "--corpus", "--ceiling", "--codec-audio", "--cfg-scale", "--lyrics-scale",
                   "--no-lyrics-contrast"):
        assert option in text, option
