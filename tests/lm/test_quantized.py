"""Weight-only int8 / int4 quantisation (heartmula.nn.quantized, heartmula.lm.quantized) and its native products."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from heartmula.cli import main as cli_main
from heartmula.errors import HeartMuLaError
from heartmula.lm import quantized as quantized_lm
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.lm.quantized import QUANT_FILE, WEIGHTS_FILE, quantize_model
from heartmula.nn import native
from heartmula.nn import quantized as quantized_nn
from heartmula.nn.quantized import BLOCK, QuantizedLinear, RowSource, dequantize, quantize
from heartmula.nn.transformer import Transformer, TransformerConfig


def spy_on_kernel(monkeypatch, *names) -> list[str]:
    calls, real = [], native.kernels()

    class Spy:
        def __getattr__(self, name):
            function = getattr(real, name)
            if name not in names:
                return function
            return lambda *args: calls.append(name) or function(*args)

    monkeypatch.setattr(native, "_loaded", Spy())
    monkeypatch.setattr(native, "_tried", True)
    return calls


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("columns", [64, 192, 1408])
def test_round_trip_stays_within_half_a_step(bits, columns):
    torch.manual_seed(columns + bits)
    weight = torch.randn(37, columns) * torch.logspace(-3, 0, 37)[:, None]  # rows of very different sizes
    data, scales, offsets = quantize(weight, bits)
    group = columns // scales.shape[1]
    assert group in (64, 128) and scales.dtype == torch.float16
    assert data.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert data.shape == (37, columns if bits == 8 else columns // 2)
    assert (offsets.shape == scales.shape) if bits == 4 else offsets.numel() == 0
    restored = dequantize(data, scales, offsets)
    step = scales.float().repeat_interleave(group, dim=1)
    assert ((restored - weight).abs() <= 0.5 * step + 1e-3 * weight.abs().amax(1, keepdim=True)).all()
    again = quantize(restored, bits)  # quantised values are fixed points, up to the float16 rounding of the scales
    assert (dequantize(*again) - restored).abs().max() <= 0.5 * step.max()


def test_int4_packs_column_t_and_t_plus_32_in_one_byte():
    weight = torch.arange(BLOCK, dtype=torch.float32).repeat(2, 1)  # one group of 0..63: scale 63/15, offset 0
    data, scales, offsets = quantize(weight, 4, group=BLOCK)
    q = torch.round(weight[0] / scales[0, 0].float()).to(torch.uint8)
    assert torch.equal(data[0], q[:32] | (q[32:] << 4))
    assert offsets[0, 0] == 0


def test_quantize_reads_a_block_of_rows_at_a_time(monkeypatch):
    monkeypatch.setattr("heartmula.nn.quantized.ROWS_PER_CHUNK", 16)
    weight = torch.randn(50, 128)
    asked = []
    source = RowSource(50, 128, lambda start, stop: asked.append((start, stop)) or weight[start:stop])
    chunked = quantize(source, 4)
    assert asked == [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert all(torch.equal(a, b) for a, b in zip(chunked, quantize(weight, 4)))


def test_many_rows_dequantise_a_block_of_weight_rows_at_a_time(monkeypatch):
    layer = QuantizedLinear(*quantize(torch.randn(100, 256), 4))
    x = torch.randn(20, 256)  # more rows than the native kernel takes: the dequantising path
    expected = x @ layer.dequantized().T
    monkeypatch.setattr(quantized_nn, "DEQUANTIZED_ROWS", 32)
    rows, real = [], quantized_nn.dequantize
    monkeypatch.setattr(quantized_nn, "dequantize", lambda data, *rest: rows.append(len(data)) or real(data, *rest))
    torch.testing.assert_close(layer(x), expected)
    assert rows == [32, 32, 32, 4]


def test_quantize_rejects_widths_it_cannot_group():
    with pytest.raises(HeartMuLaError, match="multiple"):
        quantize(torch.randn(4, 100), 4)
    with pytest.raises(HeartMuLaError, match="scales must be float16"):
        QuantizedLinear(torch.zeros(4, 64, dtype=torch.uint8), torch.ones(4, 2), torch.ones(4, 2))


def has_avx512_vnni() -> bool:
    """Whether the int4 products round their input rows to bytes here (AVX-512 VNNI, not turned off)."""
    if os.environ.get("HEARTMULA_NATIVE_AVX512") == "0":
        return False
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return all(f" {flag}" in flags for flag in ("avx512bw", "avx512dq", "avx512_vnni"))


def byte_rounded(x: torch.Tensor) -> torch.Tensor:
    """x [rows, k] as the int4 products on AVX-512 VNNI round it: to bytes, with a scale per 64 columns."""
    blocks = x.reshape(x.shape[0], -1, BLOCK)
    scales = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(scales > 0, 1 / scales, torch.zeros_like(scales))
    return (torch.round(blocks * inverse) * scales).reshape(x.shape)


def input_rounding_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[rows, n]: how far rounding x to bytes (half a step of each 64-column block's scale) can move x @ weight.T."""
    half_steps = x.reshape(x.shape[0], -1, BLOCK).abs().amax(-1) / 254  # [rows, blocks]
    weight_mass = weight.abs().reshape(weight.shape[0], -1, BLOCK).sum(-1)  # [n, blocks]
    return half_steps @ weight_mass.T


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 12])
def test_kernel_matches_the_dequantised_reference(kernels, bits, rows):
    """int8 within float rounding of F.linear with the dequantised weight; int4 within the rounding of its input
    rows to bytes (where the CPU has AVX-512 VNNI; finer elsewhere)."""
    torch.manual_seed(rows * 10 + bits)
    layer = QuantizedLinear(*quantize(torch.randn(131, 1408) * 0.05, bits))
    x = torch.randn(rows, 1408)
    x[0, :64] *= 1000  # a block with a large value: the others keep their own scales
    expected = x @ layer.dequantized().T
    got = kernels.few_rows_quantized_linear(x, *layer.native_tensors())
    float_slack = 1e-4 * expected.abs().max().item()
    if bits == 8:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=float_slack)
    else:
        assert ((got - expected).abs() <= input_rounding_bound(x, layer.dequantized()) + float_slack).all()
    with torch.inference_mode():
        torch.testing.assert_close(layer(x[None]), got[None])  # the layer takes the kernel
    picked = torch.tensor([0, 130, 7])
    assert torch.equal(kernels.dequantized_rows(*layer.native_tensors(), picked), layer.dequantized()[picked])


@pytest.mark.parametrize(("columns", "group"), [(1408, 128), (320, 64), (960, 192)])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_int4_products_are_those_of_byte_rounded_rows(kernels, columns, group, rows):
    """On AVX-512 VNNI: exactly the dequantised weights times the rows rounded to bytes per 64 columns (groups of
    64 or 128 columns, of three blocks; an odd number of blocks and of weight rows); the 16-bit products, which the
    kernel keeps to compare, near the unrounded rows' (2^-16 of a group's largest input per step)."""
    if not has_avx512_vnni():
        pytest.skip("int4 products round to bytes only on AVX-512 VNNI")
    torch.manual_seed(rows + columns)
    layer = QuantizedLinear(*quantize(torch.randn(131, columns) * 0.05, 4, group))
    x = torch.randn(rows, columns)
    x[0, :64] *= 1000
    weight = layer.dequantized()
    got = kernels.few_rows_quantized_linear(x, *layer.native_tensors())
    expected = byte_rounded(x) @ weight.T
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    try:
        kernels.use_int4_byte_products(False)
        words = kernels.few_rows_quantized_linear(x, *layer.native_tensors())
    finally:
        kernels.use_int4_byte_products(True)
    exact = x @ weight.T
    torch.testing.assert_close(words, exact, rtol=1e-3, atol=1e-3 * exact.abs().max().item())


def test_avx2_products_match_the_reference(kernels, tmp_path):
    """The AVX2 products (taken where the CPU has no AVX-512 VNNI), run here in a process that turns VNNI off."""
    script = tmp_path / "avx2.py"
    script.write_text(
        "import torch\n"
        "from heartmula.nn import native\n"
        "from heartmula.nn.quantized import QuantizedLinear, quantize\n"
        "torch.manual_seed(0)\n"
        "for bits in (8, 4):\n"
        "    layer = QuantizedLinear(*quantize(torch.randn(70, 256), bits))\n"
        "    x = torch.randn(3, 256)\n"
        "    got = native.kernels().few_rows_quantized_linear(x, *layer.native_tensors())\n"
        "    expected = x @ layer.dequantized().T\n"
        "    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max(), (got - expected).abs().max()\n"
        "print('ok')\n")
    env = {**os.environ, "HEARTMULA_NATIVE_AVX512": "0", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_kernel_rejects_what_it_cannot_read(kernels):
    layer = QuantizedLinear(*quantize(torch.randn(8, 128), 4))
    data, scales, offsets = layer.native_tensors()
    with pytest.raises(RuntimeError, match="offsets"):
        kernels.few_rows_quantized_linear(torch.randn(2, 128), data, scales, torch.empty(0))
    with pytest.raises(RuntimeError, match="shapes do not match"):
        kernels.few_rows_quantized_linear(torch.randn(2, 64), data, scales, offsets)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        kernels.few_rows_quantized_linear(torch.randn(2, 128), data, scales.repeat(1, 4).contiguous(),
                                          offsets.repeat(1, 4).contiguous())


def quantized_transformer(bits: int) -> Transformer:
    config = TransformerConfig(num_layers=2, num_heads=8, num_kv_heads=2, embed_dim=256, intermediate_dim=640,
                               max_seq_len=64, rope_base=10_000.0, scale_factor=None)
    torch.manual_seed(bits)
    model = Transformer(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.ones_like(param) if name.endswith("scale") else torch.randn_like(param) * 0.05)
    model.eval()
    model.fuse_projections()
    for layer in model.layers:
        attn, mlp = layer.attn, layer.mlp
        attn.fused_qkv.quantized = QuantizedLinear(*quantize(attn.fused_qkv.weight, bits))
        mlp.fused_gate_up.quantized = QuantizedLinear(*quantize(mlp.fused_gate_up.weight, bits))
        attn.output_proj = QuantizedLinear(*quantize(attn.output_proj.weight.detach(), bits))
        mlp.w2 = QuantizedLinear(*quantize(mlp.w2.weight.detach(), bits))
    return model


@pytest.mark.parametrize("bits", [8, 4])
def test_transformer_step_with_quantized_weights_matches_torch(kernels, bits, monkeypatch):
    model = quantized_transformer(bits)
    x, positions = torch.randn(3, 2, 256), torch.tensor([5, 6])

    def step(use_native: bool) -> torch.Tensor:
        cache = model.new_cache(3, 16, torch.float32, "cpu")
        for layer_cache in cache:
            layer_cache.k.normal_(generator=torch.Generator().manual_seed(1))
            layer_cache.v.normal_(generator=torch.Generator().manual_seed(2))
        with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
            if not use_native:
                patch.setattr(native, "_loaded", None)
                patch.setattr(native, "_tried", True)
            assert model.native_step_applies(x)
            return model(x, positions, start=5, cache=cache)

    calls = spy_on_kernel(monkeypatch, "transformer_step")
    got, expected = step(True), step(False)
    assert calls == ["transformer_step"]
    if bits == 4 and has_avx512_vnni():  # products of byte-rounded rows: 0.9% apart here; the 16-bit ones within 1e-3
        assert (got - expected).norm() <= 0.02 * expected.norm()
        try:
            kernels.use_int4_byte_products(False)
            got = step(True)
        finally:
            kernels.use_int4_byte_products(True)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def quantized_root(tiny_root, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("quantized") / "tiny-int4"
    assert cli_main(["model", "quantize", str(tiny_root), "--to", str(dest), "--quant", "int4"]) == 0
    return dest


def song_codes(generator) -> list[torch.Tensor]:
    songs = [SongRequest(lyrics="[verse]\nla la la", tags="pop,piano", seed=3)]
    return generator.generate(songs, SamplingParams(top_k=5, cfg_scale=1.5), 8)


@contextmanager
def recorded_reads(monkeypatch):
    """(name, tensor) of every tensor `heartmula.lm.quantized` reads from a safetensors file."""
    reads, real = [], quantized_lm.open_safetensors

    class Slice:
        def __init__(self, name, inner):
            self.name, self.inner = name, inner

        def __getitem__(self, index):
            tensor = self.inner[index]
            reads.append((self.name, tensor))
            return tensor

    class Handle:
        def __init__(self, inner):
            self.inner = inner

        def get_tensor(self, name):
            reads.append((name, self.inner.get_tensor(name)))
            return reads[-1][1]

        def get_slice(self, name):
            return Slice(name, self.inner.get_slice(name))

    @contextmanager
    def spy(path, device="cpu"):
        with real(path, device) as handle:
            yield Handle(handle)

    monkeypatch.setattr(quantized_lm, "open_safetensors", spy)
    yield reads


KEPT_IN_FLOAT = (".scale", "muq_linear.weight", "muq_linear.bias", "unconditional_text_embedding.weight")


def test_quantize_command_reads_float_weights_a_block_of_rows_at_a_time(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setattr(quantized_nn, "ROWS_PER_CHUNK", 16)
    with recorded_reads(monkeypatch) as reads:
        assert cli_main(["model", "quantize", str(tiny_root), "--to", str(tmp_path / "q"), "--quant", "int4"]) == 0
    quantised = [(name, t) for name, t in reads if not name.endswith(KEPT_IN_FLOAT)]
    assert {name for name, _ in quantised} >= {"audio_head", "text_embeddings.weight", "decoder.layers.0.mlp.w2.weight"}
    widest = 128  # the tiny model's FFN
    assert all(t.numel() <= 16 * widest for _, t in quantised)


def test_quantized_folder_loads_without_float_weights(quantized_root, monkeypatch):
    with recorded_reads(monkeypatch) as reads:
        generator = load_generator(quantized_root)
    floats = {name for name, t in reads if t.dtype in (torch.float32, torch.bfloat16)}
    assert floats and all(name.endswith(KEPT_IN_FLOAT) for name in floats)
    assert generator.model.audio_head.numel() == 0  # the heads exist only quantised


def test_saved_folder_loads_the_same_model(quantized_root, tiny_root):
    assert json.loads((quantized_root / QUANT_FILE).read_text())["format"] == "int4"
    stored = load_file(quantized_root / WEIGHTS_FILE)
    assert stored["backbone.layers.0.attn.q_proj.weight.qdata"].dtype == torch.uint8
    assert stored["text_embeddings.weight.qdata"].dtype == torch.int8  # embeddings at int8
    floats = {name for name, v in stored.items() if v.is_floating_point() and v.dtype != torch.float16}
    assert floats and all(name.endswith(".scale") or name.startswith(("muq_linear", "unconditional"))
                          for name in floats)
    loaded = load_generator(quantized_root)
    in_memory = load_generator(tiny_root, weights="int4")
    assert all(torch.equal(a, b) for a, b in zip(song_codes(loaded), song_codes(in_memory)))
    with pytest.raises(HeartMuLaError, match="holds int4 weights, not int8"):
        load_generator(quantized_root, weights="int8")


def test_quantized_songs_run_on_the_native_kernels(kernels, tiny_root, monkeypatch):
    generator = load_generator(tiny_root, weights="int8")
    calls = spy_on_kernel(monkeypatch, "transformer_step", "local_frame")
    codes = song_codes(generator)
    assert {"transformer_step", "local_frame"} <= set(calls)
    assert all(int(c.max()) < generator.codebook_size for c in codes)


def test_in_memory_quantisation_matches_the_loader(tiny_root):
    float_model = load_generator(tiny_root).model
    quantize_model(float_model, "int4")
    loaded = load_generator(tiny_root, weights="int4").model
    assert torch.equal(float_model.codebook0_head.data, loaded.codebook0_head.data)
    with pytest.raises(HeartMuLaError, match="quantised already"):
        quantize_model(float_model, "int4")


def test_folder_with_missing_scales_says_so(quantized_root, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", QUANT_FILE, "tokenizer.json", "gen_config.json"):
        (broken / name).write_bytes((quantized_root / name).read_bytes())
    tensors = load_file(quantized_root / WEIGHTS_FILE)
    del tensors["decoder.layers.0.mlp.w2.weight.qscales"]
    save_file(tensors, broken / WEIGHTS_FILE)
    with pytest.raises(HeartMuLaError, match=r"missing decoder\.layers\.0\.mlp\.w2\.weight\.qscales"):
        load_generator(broken)
    (broken / QUANT_FILE).write_text('{"format": "int3"}')
    with pytest.raises(HeartMuLaError, match="int8 or int4"):
        load_generator(broken)


def test_quantize_refuses_an_existing_destination(tiny_root, tmp_path, capsys):
    assert cli_main(["model", "quantize", str(tiny_root), "--to", str(tmp_path), "--quant", "int8"]) == 2
    assert "already exists" in capsys.readouterr().err
