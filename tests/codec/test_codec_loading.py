import json

import pytest
import torch
from codec_helpers import random_codes, write_official

from heartmula.codec import load_codec, locate_codec
from heartmula.codec.config import tiny_config
from heartmula.codec.model import HeartCodec
from heartmula.errors import HeartMuLaError


def test_official_key_names_are_written_and_read(tiny_dir):
    from heartmula.checkpoint import tensor_shapes

    names = set(tensor_shapes(tiny_dir))
    for expected in [
        "flow_matching.vq_embed.project_in.weight",
        "flow_matching.vq_embed.project_out.bias",
        "flow_matching.vq_embed.layers.7._codebook.embed",
        "flow_matching.vq_embed.layers.0._codebook.embed_avg",
        "flow_matching.vq_embed.layers.0._codebook.cluster_size",
        "flow_matching.vq_embed.layers.0._codebook.initted",
        "flow_matching.zero_cond_embedding1",
        "flow_matching.estimator.transformer_blocks.0.attn.q_proj.weight",
        "flow_matching.estimator.transformer_blocks_2.0.mlp.gate.weight",
        "flow_matching.estimator.adaln_single.emb.timestep_embedder.linear_1.weight",
        "flow_matching.estimator.connection_proj.ffn_1.weight",
        "scalar_model.decoder.0.parametrizations.weight.original0",
        "scalar_model.decoder.1.up_conv.layer.parametrizations.weight.original1",
        "scalar_model.decoder.6.conv.weight",  # the post-processor conv is not weight-normed
        "scalar_model.encoder.1.conv.weight",
    ]:
        assert expected in names, expected
    assert not any(name.endswith("decoder.0.weight") for name in names)


def test_weight_norm_is_folded_at_load(tiny_dir, tiny_codec):
    from safetensors.torch import load_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    for prefix, module in [
        ("scalar_model.decoder.0", tiny_codec.scalar_model.decoder[0]),
        ("scalar_model.decoder.2.up_conv.layer", tiny_codec.scalar_model.decoder[2].up_conv.layer),
        ("scalar_model.decoder.3.convs.4.conv1", tiny_codec.scalar_model.decoder[3].convs[4].conv1),
    ]:
        g = state[prefix + ".parametrizations.weight.original0"]
        v = state[prefix + ".parametrizations.weight.original1"]
        norm = torch.sqrt((v.double() ** 2).sum(dim=tuple(range(1, v.dim())), keepdim=True))
        expected = (g.double() * v.double() / norm).float()
        assert not torch.allclose(v, expected, atol=1e-3), "the fixture should make g differ from ||v||"
        torch.testing.assert_close(module.weight, expected, rtol=1e-6, atol=1e-7)


def test_sharded_checkpoint_decodes_like_single_file(tmp_path, tiny_dir, tiny_codec):
    sharded = tmp_path / "sharded"
    write_official(sharded, tiny_config(), seed=3, max_shard_bytes=200_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    codes = random_codes(12)
    a, _ = tiny_codec.decode(codes, seed=1)
    b, _ = load_codec(sharded).decode(codes, seed=1)
    assert a.shape == b.shape
    assert (a == b).all()


def test_save_pretrained_round_trip(tmp_path, tiny_codec):
    tiny_codec.save_pretrained(tmp_path / "copy")
    again = HeartCodec.from_pretrained(tmp_path / "copy")
    for (name, x), (_, y) in zip(tiny_codec.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    config = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert config["model_type"] == "heartcodec"
    assert "decoder_type" not in config  # official-style files carry no extension keys


def test_locate_official_root_and_folder(tiny_dir):
    assert locate_codec(tiny_dir.parent) == tiny_dir
    assert locate_codec(tiny_dir) == tiny_dir


def test_bad_folders_raise_clear_errors(tmp_path, tiny_dir):
    with pytest.raises(HeartMuLaError, match="neither HeartCodec-oss"):
        locate_codec(tmp_path)
    with pytest.raises(HeartMuLaError, match="not a folder"):
        load_codec(tmp_path / "nope")
    # A tensor missing from the file
    from heartmula.checkpoint import save_state_dict

    broken = tmp_path / "broken"
    state = write_official(broken, tiny_config(), seed=3)
    state.pop("flow_matching.cond_feature_emb.bias")
    save_state_dict(state, broken)
    with pytest.raises(HeartMuLaError, match="cond_feature_emb.bias"):
        load_codec(broken)
    # A config that does not match the weights
    config = json.loads((tiny_dir / "config.json").read_text())
    config["dim"] = 48
    config["in_channels"] = 2 * 256 + 48
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / "config.json").write_text(json.dumps(config))
    (mismatched / "model.safetensors").write_bytes((tiny_dir / "model.safetensors").read_bytes())
    with pytest.raises(HeartMuLaError, match="shape"):
        load_codec(mismatched)
    (mismatched / "config.json").write_text(json.dumps({**config, "model_type": "heartmula"}))
    with pytest.raises(HeartMuLaError, match="model_type"):
        load_codec(mismatched)
