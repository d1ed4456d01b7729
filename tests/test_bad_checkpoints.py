"""Every broken checkpoint ends in a HeartMuLaError that names the file at fault, for the LM and the codec loaders,
and the CLI prints it without a traceback."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from heartmula.checkpoint import INDEX_FILE
from heartmula.cli import main
from heartmula.codec.pretrained import load_codec, write_random_codec
from heartmula.errors import HeartMuLaError
from heartmula.lm.pretrained import load_generator, write_random_root

SHARD_BYTES = 60_000


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A sharded tiny LM root and a sharded tiny codec folder (copied, then broken, by each test)."""
    base = tmp_path_factory.mktemp("good")
    write_random_root(base / "lm", "tiny", seed=0, max_shard_bytes=SHARD_BYTES)
    write_random_codec(base / "codec", "tiny", seed=0, max_shard_bytes=SHARD_BYTES)
    return base


def _copy(sources: Path, kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """(what the loader is given, the folder holding config.json and the weights)."""
    shutil.copytree(sources / kind, tmp_path / kind)
    root = tmp_path / kind
    return root, (root / "HeartMuLa-oss-3B" if kind == "lm" else root)


def _load(kind: str, path: Path):
    return load_generator(path) if kind == "lm" else load_codec(path)


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX_FILE).read_text())


def _first_shard(folder: Path) -> Path:
    return folder / sorted(set(_index(folder)["weight_map"].values()))[0]


def _truncate(folder):
    shard = _first_shard(folder)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name, "truncated or corrupt"


def _corrupt_header(folder):
    shard = _first_shard(folder)
    data = bytearray(shard.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header starts at byte 8
    shard.write_bytes(bytes(data))
    return shard.name, "truncated or corrupt"


def _not_safetensors(folder):
    shard = _first_shard(folder)
    shard.write_text("<html>404 Not Found</html>")  # what a bad mirror or proxy saves
    return shard.name, "truncated or corrupt"


def _shard_missing(folder):
    shard = _first_shard(folder)
    shard.unlink()
    return shard.name, "missing; download the folder again"


def _index_names_absent_tensor(folder):
    index = _index(folder)
    index["weight_map"]["made.up.weight"] = sorted(set(index["weight_map"].values()))[0]
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return INDEX_FILE, "'made.up.weight'.*does not hold it"


def _index_lacks_entry(folder):
    index = _index(folder)
    name = sorted(index["weight_map"])[0]
    del index["weight_map"][name]
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return folder.name, f"'{name}' is missing from the checkpoint"


def _index_not_json(folder):
    (folder / INDEX_FILE).write_text('{"weight_map": ')
    return INDEX_FILE, "not a valid safetensors index"


def _index_wrong_shape(folder):
    (folder / INDEX_FILE).write_text(json.dumps({"weight_map": ["model-00001-of-00002.safetensors"]}))
    return INDEX_FILE, "weight_map must map names to file names"


def _integer_weights(folder):
    shard = _first_shard(folder)
    state = load_file(shard)
    name = sorted(name for name, t in state.items() if t.is_floating_point())[0]
    state[name] = state[name].to(torch.int32)
    save_file(state, shard)
    return shard.name, f"'{name}'.*stored as I32, not as a floating-point type"


BROKEN_WEIGHTS = [_truncate, _corrupt_header, _not_safetensors, _shard_missing, _index_names_absent_tensor,
                  _index_lacks_entry, _index_not_json, _index_wrong_shape, _integer_weights]


@pytest.mark.parametrize("kind", ["lm", "codec"])
@pytest.mark.parametrize("breakage", BROKEN_WEIGHTS, ids=lambda f: f.__name__.strip("_"))
def test_broken_weights_are_named(sources, tmp_path, kind, breakage):
    path, folder = _copy(sources, kind, tmp_path)
    file_name, message = breakage(folder)
    with pytest.raises(HeartMuLaError, match=message) as caught:
        _load(kind, path)
    assert file_name in str(caught.value)


def test_half_a_single_file_checkpoint_is_named(tmp_path):
    folder = write_random_root(tmp_path, "tiny", seed=0)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HeartMuLaError, match=f"{weights}.*truncated or corrupt"):
        load_generator(tmp_path)


LM_CONFIGS = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON list, not an object"),
    (json.dumps({"model_type": "llama"}), "model_type is 'llama'"),
    (json.dumps({"audio_vocab_size": "8197"}), "'audio_vocab_size' is '8197'"),
    (json.dumps({"backbone_flavor": "x", "backbone_config": {"num_layers": 2, "num_heads": 4, "num_kv_heads": 3,
                 "embed_dim": 64, "intermediate_dim": 128, "max_seq_len": 64}}), "not a multiple of num_kv_heads"),
    (json.dumps({"backbone_flavor": "x", "backbone_config": {"num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                 "embed_dim": "64", "intermediate_dim": 128, "max_seq_len": 64}}), "'embed_dim' is '64'"),
    (json.dumps({"text_vocab_size": -5}), "cannot be built"),
]


@pytest.mark.parametrize("text, message", LM_CONFIGS)
def test_bad_lm_config_is_named(sources, tmp_path, text, message):
    path, folder = _copy(sources, "lm", tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(HeartMuLaError, match=message) as caught:
        load_generator(path)
    assert str(folder / "config.json") in str(caught.value)


def _edit_codec_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


CODEC_CONFIGS = [
    ({"num_quantizers": 8.5}, "'num_quantizers' is 8.5"),
    ({"decoder_type": "diffusion"}, "decoder_type 'diffusion'"),
    ({"direct_decoder": {"hidden_dim": "wide"}, "decoder_type": "direct"}, "'hidden_dim' is 'wide'"),
    ({"upsample_factors": 5}, "'upsample_factors' is 5"),
    ({"codebook_size": -3}, "cannot be built"),
]


@pytest.mark.parametrize("changes, message", CODEC_CONFIGS)
def test_bad_codec_config_is_named(sources, tmp_path, changes, message):
    path, folder = _copy(sources, "codec", tmp_path)
    _edit_codec_config(folder, **changes)
    with pytest.raises(HeartMuLaError, match=message) as caught:
        load_codec(path)
    assert str(folder / "config.json") in str(caught.value)


def test_generate_reports_a_broken_checkpoint_without_a_traceback(sources, tmp_path, capsys):
    path, folder = _copy(sources, "lm", tmp_path)
    shard_name, _ = _truncate(folder)
    assert main(["generate", "--model", str(path), "--duration", "1", "--no-decode",
                 "--codes-out", str(tmp_path / "codes.npy"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heartmula: error: ") and shard_name in err and "Traceback" not in err
