import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.nn import native
from heartmula.nn.layers import Linear, computing_upstream_products, linear, upstream_products
from heartmula.nn.quant import Int8Linear, quantize_int8


def test_int8_linear_is_close_to_float():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    quantized = Int8Linear.from_linear(linear)
    x = torch.randn(5, 3, 96)
    expected = linear(x)
    got = quantized(x)
    assert got.shape == expected.shape
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.02  # weights and (on x86) activations are rounded to 8 bits


def test_int8_model_generates_valid_codes(generator):
    quantize_int8(generator.model)
    model = generator.model
    float_linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert float_linears == ["muq_linear"]  # used once per song, at the prefill
    # tiny preset: 2 backbone layers + 1 decoder layer of 4 int8 products each (q/k/v fused, gate/up fused, output,
    # down), projection, codebook-0 head, 7 heads; the separate q, k, v, gate and up layers are gone
    fused = [f.quantized for m in model.modules() for f in (getattr(m, "fused_qkv", None),
                                                            getattr(m, "fused_gate_up", None)) if f is not None]
    assert len(fused) == 2 * 3 and all(isinstance(layer, Int8Linear) for layer in fused)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 2 * 3 + 2 + 7
    assert all(layer.attn.q_proj is None and layer.mlp.w1 is None for layer in model.backbone.layers)
    codes = generator.generate([SongRequest(lyrics="la la", tags="pop", seed=0)], SamplingParams(), 10)[0]
    assert codes.shape[0] == 8 and 1 <= codes.shape[1] <= 11
    assert int(codes.max()) < generator.codebook_size


def test_compiled_steps_give_the_same_song(generator):
    song = SongRequest(lyrics="[verse]\nsing along", tags="rock", seed=4)
    sampling = SamplingParams(top_k=5, cfg_scale=1.5)
    eager = generator.generate([song], sampling, 8)[0]
    generator.compile(backend="eager")  # graph capture without code generation keeps the test fast
    assert torch.equal(generator.generate([song], sampling, 8)[0], eager)


@pytest.mark.parametrize("transposed", [True, False])  # AMD CPUs / the others, without the native kernel
def test_few_row_linear_matches_f_linear(transposed, monkeypatch):
    monkeypatch.setattr("heartmula.nn.layers.TRANSPOSED_FEW_ROWS", transposed)
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(native, "_tried", True)
    torch.manual_seed(0)
    weight = torch.randn(300, 64)
    for shape in [(1, 64), (3, 64), (2, 1, 64), (4, 8, 64), (5, 9, 64)]:  # the last one has more than FEW_ROWS rows
        x = torch.randn(*shape)
        expected = F.linear(x, weight)
        got = linear(x, weight)
        assert got.shape == expected.shape and got.is_contiguous()
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
        bias = torch.randn(300)
        with upstream_products():
            assert torch.equal(linear(x, weight), expected)
            assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
    layer = Linear(64, 300)
    x = torch.randn(3, 64)
    assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_compat_sessions_compute_with_f_linear_bits(generator):
    """Compat frames compute with upstream's F.linear products, default frames with the few-row ones: a choice of
    each session's own calls, so sessions taking turns on one model never change it."""
    model = generator.model
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(layers) == 7 * 2 + 7 * 1 + 2  # tiny preset: every linear layer but muq_linear
    hidden = torch.randn(2, model.config.decoder.embed_dim)
    seen = []
    codebook_logits = model.codebook_logits

    def spy(codebook, decoder_hidden):
        exact = torch.equal(codebook_logits(3, hidden), F.linear(hidden, model.audio_head[2].t()))
        seen.append((computing_upstream_products(), exact))
        return codebook_logits(codebook, decoder_hidden)

    model.codebook_logits = spy
    song = SongRequest(lyrics="la la", tags="pop", seed=0)
    compat = generator.start([song], SamplingParams(cfg_scale=1.5), 4, compat=True)
    default = generator.start([song], SamplingParams(cfg_scale=1.5), 4)
    default.sampler.fused_local_frame = False  # the torch loop, which asks codebook_logits
    for session, upstream in [(compat, True), (default, False), (compat, True)]:
        seen.clear()
        session.next_frame()
        assert seen and all(flag == upstream for flag, _ in seen)
        assert all(exact for _, exact in seen) or not upstream
    del model.codebook_logits
    assert not computing_upstream_products()


def _unfuse(model) -> None:
    for transformer in (model.backbone, model.decoder):
        for layer in transformer.layers:
            layer.attn.fused_qkv = layer.mlp.fused_gate_up = None


def test_fused_projections_compute_the_same_layers(tiny_root):
    model = load_generator(tiny_root).model  # loading for generation fuses
    attn = model.backbone.layers[0].attn
    # the separate weights are row blocks of the fused matrix: same names and values, no second copy
    assert attn.k_proj.weight.data_ptr() == attn.fused_qkv.weight[attn.q_proj.out_features].data_ptr()
    x = torch.randn(2, 3, model.config.backbone.embed_dim)
    with torch.inference_mode():
        assert attn.fused_qkv.active() and model.backbone.layers[0].mlp.fused_gate_up.active()
        fused = model.backbone(x, torch.arange(3))
        with upstream_products():  # compat mode: upstream's separate F.linear products
            assert not attn.fused_qkv.active()
        _unfuse(model)
        separate = model.backbone(x, torch.arange(3))
    assert torch.allclose(fused, separate, rtol=1e-5, atol=1e-5)


def test_fused_model_still_trains_and_saves(tiny_root, tmp_path):
    model = load_generator(tiny_root).model
    attn = model.backbone.layers[0].attn
    x = torch.randn(2, 3, model.config.backbone.embed_dim)
    assert not attn.fused_qkv.active()  # gradients wanted: the separate layers, which autograd sees
    model.backbone(x, torch.arange(3)).square().mean().backward()
    assert attn.q_proj.weight.grad is not None and attn.q_proj.weight.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=1.0).step()  # in place: the fused matrix follows
    assert torch.equal(attn.fused_qkv.weight[: attn.q_proj.out_features], attn.q_proj.weight.detach())
    model.save_pretrained(tmp_path / "saved")  # shared storage is written out as separate tensors
    reloaded = type(model).from_pretrained(tmp_path / "saved")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    model.to(torch.bfloat16)  # new storage: the fusion steps aside
    assert not attn.fused_qkv.intact()
    with torch.inference_mode():
        assert model.backbone(x.bfloat16(), torch.arange(3)).dtype == torch.bfloat16
