import numpy as np
import pytest
import soundfile as sf
import torch

from heartmula import HeartMuLaError, HeartMuLaPipeline, Song
from heartmula.cli import main
from heartmula.lm.generation import SamplingParams, SongRequest, frames_for_duration
from heartmula.lm.pretrained import write_random_root
from heartmula.pipeline import default_dtype, resolve_device
from heartmula.song_models import load_lm


@pytest.fixture(scope="module")
def pipe(song_root):
    return HeartMuLaPipeline.from_pretrained(song_root, device="cpu")


def codes_the_direct_way(song_root, lyrics, tags, seed, duration, compat=False):
    """The LM called directly, as the CLI did before the pipeline existed."""
    generator = load_lm(song_root, "3B", "float32", "cpu")
    torch.manual_seed(seed)
    request = SongRequest(lyrics=lyrics, tags=tags, seed=seed)
    codes = generator.generate([request], SamplingParams(), frames_for_duration(duration), compat=compat)[0]
    return codes.numpy().astype(np.int64)


@pytest.mark.parametrize("compat", [False, True])
def test_pipeline_codes_are_bit_identical_to_the_direct_path(song_root, pipe, compat):
    expected = codes_the_direct_way(song_root, "[verse]\nla la la", "pop,piano", 7, 2.0, compat)
    request = pipe.requests("[verse]\nla la la", "pop,piano", 7)
    got = pipe.generate_codes(request, duration=2.0, compat=compat)[0]
    assert got.dtype == np.int64 and np.array_equal(got, expected)


def test_the_cli_writes_the_pipelines_codes_and_audio(song_root, pipe, tmp_path):
    out, codes_out = tmp_path / "song.wav", tmp_path / "song.npy"
    assert main(["generate", "--model", str(song_root), "--tags", "rock", "--lyrics", "hey", "--duration", "1.5",
                 "--seed", "4", "--out", str(out), "--codes-out", str(codes_out), "--quiet"]) == 0
    song = pipe("hey", tags="rock", duration=1.5, seed=4)
    assert np.array_equal(np.load(codes_out), song.codes)
    audio, rate = sf.read(str(out), dtype="float32", always_2d=True)
    assert rate == song.sample_rate and np.allclose(audio.T, song.audio, atol=1e-4)  # 16-bit file vs float


def test_one_call_returns_a_song_that_saves(pipe, tmp_path):
    song = pipe("[chorus]\nsing it", tags="pop", duration=1.0, seed=0)
    assert isinstance(song, Song)
    assert song.audio.dtype == np.float32 and song.audio.ndim == 2 and song.audio.shape[0] in (1, 2)
    assert song.codes.shape[0] == 8 and song.sample_rate == pipe.sample_rate
    assert song.duration == pytest.approx(song.audio.shape[1] / song.sample_rate)
    assert np.abs(song.audio).max() <= 0.98 + 1e-6
    path = song.save(tmp_path / "song.flac")
    assert sf.info(str(path)).frames == song.audio.shape[1]


def test_a_list_of_requests_is_one_batch_and_each_song_is_as_alone(pipe):
    songs = pipe(["first", ""], tags=["pop", "jazz"], seed=[1, 2], duration=1.0)
    assert isinstance(songs, list) and len(songs) == 2
    alone = pipe("", tags="jazz", seed=2, duration=1.0)
    assert np.array_equal(songs[1].codes, alone.codes)
    assert songs[0].lyrics == "first" and songs[1].tags == "jazz"


def test_bad_requests_fail_clearly(pipe):
    with pytest.raises(HeartMuLaError, match="tags: 3 values for 2 songs"):
        pipe(["a", "b"], tags=["x", "y", "z"])
    with pytest.raises(HeartMuLaError, match="duration"):
        pipe("a", duration=0)
    with pytest.raises(HeartMuLaError, match="temperature"):
        pipe("a", temperature=-1)


def test_codes_only_pipeline_never_looks_for_a_codec(tmp_path):
    write_random_root(tmp_path, "tiny", seed=0)  # no codec beside it
    with pytest.raises(HeartMuLaError, match="HeartCodec-oss"):
        HeartMuLaPipeline.from_pretrained(tmp_path)
    codes_only = HeartMuLaPipeline.from_pretrained(tmp_path, decode=False)
    codes = codes_only.generate_codes(codes_only.requests("", "pop", 0), duration=0.5)[0]
    assert codes.shape[0] == 8
    with pytest.raises(HeartMuLaError, match="decode=False"):
        codes_only.decode(codes)


def test_the_stream_yields_audio_chunks(pipe):
    with pipe.stream("la", tags="pop", duration=1.0, seed=0) as session:
        chunks = list(session)
    assert chunks and all(chunk.audio.shape[0] in (1, 2) for chunk in chunks)
    assert sum(chunk.audio.shape[1] for chunk in chunks) > 0


def test_auto_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type in ("cpu", "mps")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert default_dtype(torch.device("cuda")) == "bfloat16" and default_dtype(torch.device("cpu")) == "float32"


def test_the_embedded_defaults_load_with_no_arguments():
    pipe = HeartMuLaPipeline.from_pretrained()
    song = pipe("[verse]\nhello", tags="pop", duration=1.0, seed=0)
    assert song.sample_rate == 24000 and song.codes.shape[0] == 8
