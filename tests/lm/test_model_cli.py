"""`heartmula model init / info / convert`."""

import json

import torch

from heartmula.checkpoint import load_state_dict
from heartmula.cli import main
from heartmula.lm.pretrained import locate_lm


def test_convert_to_bfloat16_writes_one_loadable_folder(tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["model", "init", str(root), "--seed", "4"]) == 0
    dest = tmp_path / "small"
    assert main(["model", "convert", str(root), str(dest), "--dtype", "bfloat16"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "gen_config.json", "model.safetensors",
                                                       "tokenizer.json"]
    original = load_state_dict(root / "HeartMuLa-oss-3B")
    converted = load_state_dict(dest)
    assert original.keys() == converted.keys()
    for name, tensor in converted.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(tensor, original[name].to(torch.bfloat16)), name
    assert locate_lm(dest).model_dir == dest  # a bare folder: tokenizer and gen_config beside the weights
    capsys.readouterr()
    assert main(["model", "info", str(dest)]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == sum(t.numel() for t in original.values())
    # never overwrites
    assert main(["model", "convert", str(root), str(dest)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_a_codec_folder_to_float16(tmp_path, capsys):
    from heartmula.codec.pretrained import load_codec, write_random_codec

    source = tmp_path / "codec"
    write_random_codec(source, preset="tiny-harmonic", seed=1)
    (source / "train_log.jsonl").write_text("{}\n")  # training leftovers stay behind
    dest = tmp_path / "shipped"
    assert main(["model", "convert", str(source), str(dest), "--dtype", "float16"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    original, converted = load_state_dict(source), load_state_dict(dest)
    assert original.keys() == converted.keys()
    for name, tensor in converted.items():
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float16
            assert torch.equal(tensor, original[name].to(torch.float16)), name
    assert load_codec(dest).config.to_dict() == load_codec(source).config.to_dict()
