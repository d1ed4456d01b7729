import re
from pathlib import Path

import pytest
import torch

from heartmula.checkpoint import load_state_dict
from heartmula.lm.backends import pack_weights_in_huge_pages
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.nn.memory import HUGE_PAGE, huge_page_buffer, huge_pages_available, pack_in_huge_pages
from heartmula.nn.quant import quantize_int8

needs_huge_pages = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages here")


@pytest.fixture
def pack_any_size(monkeypatch):
    """The tiny test LM is far below one huge page, which packing would otherwise leave alone."""
    monkeypatch.setattr("heartmula.nn.memory.MIN_BYTES", 0)


def mapping_flags(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            if inside:
                break
            inside = int(span[1], 16) <= address < int(span[2], 16)
        elif inside and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


@needs_huge_pages
def test_huge_page_buffer_is_aligned_and_advised():
    buffer = huge_page_buffer(3 * HUGE_PAGE + 100)
    assert buffer.numel() == 3 * HUGE_PAGE + 100 and buffer.data_ptr() % HUGE_PAGE == 0
    buffer.fill_(1)
    assert mapping_flags(buffer.data_ptr()).get("THPeligible") == "1"


@needs_huge_pages
def test_packing_keeps_parameters_values_and_sharing(tiny_root, pack_any_size):
    generator = load_generator(tiny_root)  # packs
    model = generator.model
    state = load_state_dict(Path(tiny_root) / "HeartMuLa-oss-3B")
    block = model.audio_head.untyped_storage().data_ptr()
    packed = [name for name, p in model.named_parameters() if p.untyped_storage().data_ptr() == block]
    assert "backbone.layers.0.attn.q_proj.weight" in packed and "codebook0_head.weight" in packed
    assert not any("embeddings" in name for name in packed)
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), state[name]), name
    attn = model.backbone.layers[1].attn
    assert attn.fused_qkv.intact()  # q, k, v are still row blocks of the fused matrix
    with torch.no_grad():
        attn.q_proj.weight.add_(1.0)
    assert torch.equal(attn.fused_qkv.weight[: attn.q_proj.out_features], attn.q_proj.weight)
    assert model.audio_head.stride()[1] == 1  # the row-major heads keep their layout

    # Packing again builds a new block with the same values.
    before = [p.detach().clone() for p in model.parameters()]
    assert pack_weights_in_huge_pages(model) > 0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_pack_is_a_no_op_without_huge_pages(monkeypatch):
    monkeypatch.setattr("heartmula.nn.memory.huge_pages_available", lambda: False)
    holder = torch.nn.Linear(1024, 1024)
    pointer = holder.weight.data_ptr()
    assert pack_in_huge_pages([(holder.weight, "data")]) == 0 and holder.weight.data_ptr() == pointer


@needs_huge_pages
def test_small_sets_are_left_alone():
    holder = torch.nn.Linear(16, 16)
    pointer = holder.weight.data_ptr()
    assert pack_in_huge_pages([(holder.weight, "data")]) == 0 and holder.weight.data_ptr() == pointer


@needs_huge_pages
def test_packed_model_generates_the_same_song_and_int8_releases_the_block(tiny_root, pack_any_size, monkeypatch):
    song = SongRequest(lyrics="[verse]\nla la", tags="pop", seed=2)
    sampling = SamplingParams(top_k=5)
    packed = load_generator(tiny_root)
    monkeypatch.setattr("heartmula.lm.backends.pack_weights_in_huge_pages", lambda model: 0)
    plain = load_generator(tiny_root)
    block = packed.model.audio_head.untyped_storage().data_ptr()
    assert packed.model.codebook0_head.weight.untyped_storage().data_ptr() == block
    assert plain.model.codebook0_head.weight.untyped_storage().data_ptr() != block
    assert torch.equal(packed.generate([song], sampling, 8)[0], plain.generate([song], sampling, 8)[0])
    quantize_int8(packed.model)
    assert all(p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in packed.model.parameters())
    assert packed.generate([song], sampling, 8)[0].shape[0] == 8
