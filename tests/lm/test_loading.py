import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from heartmula.checkpoint import INDEX_FILE, SINGLE_FILE
from heartmula.errors import HeartMuLaError
from heartmula.lm.config import FLAVORS, HeartMuLaConfig
from heartmula.lm.model import HeartMuLa
from heartmula.lm.pretrained import load_generator, locate_lm, write_random_root


def test_official_root_and_bare_folder_load_the_same_weights(tiny_root):
    from_root = load_generator(tiny_root).model
    from_folder = load_generator(tiny_root / "HeartMuLa-oss-3B").model
    for (name, a), (_, b) in zip(from_root.state_dict().items(), from_folder.state_dict().items()):
        assert torch.equal(a, b), name


def test_sharded_checkpoint_loads_like_single_file(tmp_path, tiny_root):
    folder = write_random_root(tmp_path, "tiny", seed=0, max_shard_bytes=50_000)
    index = json.loads((folder / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (folder / SINGLE_FILE).exists()
    sharded = load_generator(tmp_path).model.state_dict()
    single = load_generator(tiny_root).model.state_dict()
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[k], single[k]) for k in single)


def test_official_tensor_names_and_shapes():
    shapes = HeartMuLa.expected_shapes(HeartMuLaConfig())  # the 3B release, built on the meta device
    assert len(shapes) == 289
    assert shapes["text_embeddings.weight"] == (128256, 3072)
    assert shapes["audio_embeddings.weight"] == (8197 * 8, 3072)
    assert shapes["unconditional_text_embedding.weight"] == (1, 3072)
    assert shapes["projection.weight"] == (3072, 3072)
    assert shapes["codebook0_head.weight"] == (8197, 3072)
    assert shapes["audio_head"] == (7, 3072, 8197)
    assert shapes["muq_linear.weight"] == (3072, 512)
    assert shapes["backbone.layers.27.attn.k_proj.weight"] == (8 * 128, 3072)
    assert shapes["decoder.layers.2.attn.q_proj.weight"] == (8 * 384, 3072)
    assert shapes["decoder.layers.2.mlp.w1.weight"] == (8192, 3072)
    assert "backbone.norm.scale" in shapes and "decoder.layers.0.sa_norm.scale" in shapes


def test_flavor_numbers():
    assert FLAVORS["llama-3B"].dim_per_head == 128
    assert FLAVORS["llama-300M"].dim_per_head == 384
    assert FLAVORS["llama-7B"].num_layers == 32
    with pytest.raises(HeartMuLaError, match="unknown model flavor"):
        _ = HeartMuLaConfig(backbone_flavor="llama-1T").backbone


def _copy_root(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst / "HeartMuLa-oss-3B"


def _drop_backbone_w2(state):
    del state["backbone.layers.1.mlp.w2.weight"]


def _add_lm_head(state):
    state["lm_head.weight"] = torch.zeros(2, 2)


def _misshape_projection(state):
    state["projection.weight"] = torch.zeros(3, 3)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_drop_backbone_w2, r"'backbone\.layers\.1\.mlp\.w2\.weight' is missing.*root"),
        (_add_lm_head, "unexpected tensor 'lm_head.weight'"),
        (_misshape_projection, r"'projection\.weight'.*shape \[3, 3\]"),
    ],
)
def test_bad_tensor_is_named(tmp_path, tiny_root, corrupt, message):
    folder = _copy_root(tiny_root, tmp_path / "root")
    state = load_file(folder / SINGLE_FILE)
    corrupt(state)
    save_file(state, folder / SINGLE_FILE)
    with pytest.raises(HeartMuLaError, match=message):
        load_generator(tmp_path / "root")


def test_bad_folders(tmp_path, tiny_root):
    with pytest.raises(HeartMuLaError, match="not a folder"):
        locate_lm(tmp_path / "nope")
    with pytest.raises(HeartMuLaError, match="neither HeartMuLa-oss-3B"):
        locate_lm(tmp_path)
    with pytest.raises(HeartMuLaError, match="holds versions 3B"):
        locate_lm(tiny_root, version="7B")
    broken = _copy_root(tiny_root, tmp_path / "root")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(HeartMuLaError, match="not valid JSON"):
        load_generator(tmp_path / "root")


def test_dtype_and_device_choice(tiny_root):
    model = load_generator(tiny_root, dtype="bfloat16").model
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.device.type == "cpu"
    with pytest.raises(HeartMuLaError, match="unknown dtype"):
        load_generator(tiny_root, dtype="float8")


def test_save_pretrained_round_trip(tmp_path, generator):
    generator.model.save_pretrained(tmp_path / "copy")
    again = HeartMuLa.from_pretrained(tmp_path / "copy")
    assert again.config.to_dict() == generator.model.config.to_dict()
    for name, tensor in generator.model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
