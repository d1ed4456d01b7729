import pytest
import torch
import torch.nn.functional as F

from heartmula.lm.backends import local_frame_weights
from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator
from heartmula.nn import native
from heartmula.nn.layers import NATIVE_ROWS, linear, upstream_products
from heartmula.nn.quant import quantize_linears
from heartmula.nn.sampling import sample_among_top_k
from heartmula.nn.transformer import Transformer, TransformerConfig


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader as if nothing had been built in this process yet."""
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_loaded", None)


@pytest.mark.parametrize("in_features", [512, 37, 8, 3])  # whole 32-blocks, 8-blocks + tail, one block, tail only
@pytest.mark.parametrize("rows", [1, 2, 3, 5, NATIVE_ROWS])
def test_few_rows_linear_matches_f_linear(kernels, rows, in_features):
    torch.manual_seed(rows * 1000 + in_features)
    weight, bias, x = torch.randn(131, in_features), torch.randn(131), torch.randn(rows, in_features)
    expected = F.linear(x, weight, bias)
    got = kernels.few_rows_linear(x, weight, bias)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(kernels.few_rows_linear(x, weight, None), F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_linear_takes_the_kernel_for_few_rows_only(kernels, monkeypatch):
    calls = []

    class Spy:
        def few_rows_linear(self, x, weight, bias):
            calls.append(x.shape[0])
            return kernels.few_rows_linear(x, weight, bias)

    monkeypatch.setattr(native, "_loaded", Spy())
    monkeypatch.setattr(native, "_tried", True)
    weight = torch.randn(64, 48)
    x = torch.randn(2, 3, 48)  # 6 rows: the kernel, output in x's leading shape
    assert torch.allclose(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    assert calls == [6]
    linear(torch.randn(NATIVE_ROWS + 1, 48), weight)  # more rows: torch's product
    with upstream_products():  # upstream's bits: F.linear
        linear(torch.randn(2, 48), weight)
    linear(torch.randn(2, 48), weight.t().contiguous().t())  # a transposed view: no kernel (it reads rows)
    x = torch.randn(2, 48, requires_grad=True)  # autograd: the kernel has no backward
    linear(x, weight).sum().backward()
    assert calls == [6] and x.grad is not None and torch.allclose(x.grad, weight.sum(0).expand(2, 48))


def test_kernel_rejects_what_it_cannot_read(kernels):
    weight = torch.randn(16, 32)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.few_rows_linear(torch.randn(2, 32, dtype=torch.float64), weight, None)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.few_rows_linear(torch.randn(2, 32), weight.t(), None)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        kernels.few_rows_linear(torch.randn(2, 31), weight, None)
    with pytest.raises(RuntimeError, match="bias size"):
        kernels.few_rows_linear(torch.randn(2, 32), weight, torch.randn(15))


def test_turned_off_by_environment(monkeypatch, fresh_loader):
    monkeypatch.setenv("HEARTMULA_NATIVE", "0")
    assert native.unavailable_reason() == "turned off by HEARTMULA_NATIVE=0"
    assert native.kernels() is None
    weight, x = torch.randn(20, 16), torch.randn(2, 16)
    assert torch.allclose(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, fresh_loader):
    monkeypatch.delenv("HEARTMULA_NATIVE", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    attempts = []

    def failing_build():
        attempts.append(1)
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_build", failing_build)
    with pytest.warns(UserWarning, match="could not be built.*Ninja is required"):
        assert native.kernels() is None
    assert native.kernels() is None and attempts == [1]  # not retried for every product
    assert native.main() == 1


def test_other_cpus_keep_torch_products(monkeypatch, fresh_loader):
    monkeypatch.delenv("HEARTMULA_NATIVE", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert "no AVX2" in native.unavailable_reason()
    assert native.kernels() is None and native.main() == 0


def spy_on_kernel(monkeypatch, *names: str) -> list[str]:
    """The names of the calls made to these native kernels, in order (the others pass through unrecorded)."""
    kernels, calls = native.kernels(), []

    class Spy:
        def __getattr__(self, attribute):
            kernel = getattr(kernels, attribute)
            return (lambda *args: calls.append(attribute) or kernel(*args)) if attribute in names else kernel

    monkeypatch.setattr(native, "_loaded", Spy())
    return calls


def make_transformer(heads: int, kv_heads: int, dim: int, layers: int = 2) -> Transformer:
    config = TransformerConfig(num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, embed_dim=dim,
                               intermediate_dim=3 * dim, max_seq_len=1024)
    torch.manual_seed(heads * 100 + kv_heads * 10 + dim)
    model = Transformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * 0.3 + (1.0 if param.dim() == 1 else 0.0))
    model.fuse_projections()
    return model.eval()


def run_with_cache(model, x, positions, start, key_mask, filled_cache, use_native: bool):
    """Output and caches of `model` continuing `filled_cache` with x, on the native step or on torch's path."""
    cache = model.new_cache(len(filled_cache[0][0]), filled_cache[0][0].shape[2], torch.float32, "cpu")
    for layer_cache, (k, v) in zip(cache, filled_cache):
        layer_cache.k.copy_(k)
        layer_cache.v.copy_(v)
    calls = []
    step = model._native_step
    model._native_step = lambda *args: calls.append(1) or step(*args)
    with torch.inference_mode():
        if use_native:
            out = model(x, positions, start=start, key_mask=key_mask, cache=cache)
        else:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(native, "_loaded", None)
                patch.setattr(native, "_tried", True)
                out = model(x, positions, start=start, key_mask=key_mask, cache=cache)
    assert len(calls) == int(use_native)
    return out, [(layer_cache.k.clone(), layer_cache.v.clone()) for layer_cache in cache]


@pytest.mark.parametrize(("heads", "kv_heads", "dim"), [(8, 2, 512), (4, 4, 96), (6, 2, 60), (4, 1, 40)])
@pytest.mark.parametrize(("batch", "tokens", "start"), [(2, 1, 37), (3, 2, 0), (1, 1, 0), (2, 4, 9), (2, 1, 700)])
def test_transformer_step_matches_torch(kernels, heads, kv_heads, dim, batch, tokens, start):
    """A decoding step in one native call = the layer-by-layer torch path: hidden states and the cache writes.
    Head sizes 64, 24, 10 and 10 cover whole and partial 8- and 32-float blocks; grouped and plain attention."""
    model = make_transformer(heads, kv_heads, dim)
    head_dim = dim // heads
    capacity = max(48, start + tokens + 5)
    filled = [(torch.randn(batch + 1, kv_heads, capacity, head_dim), torch.randn(batch + 1, kv_heads, capacity,
                                                                                 head_dim)) for _ in model.layers]
    x = torch.randn(batch, tokens, dim)
    positions = torch.arange(start, start + tokens) + torch.arange(batch)[:, None] * 3  # rows at other positions
    key_mask = torch.ones(batch, capacity, dtype=torch.bool)
    key_mask[0, : start // 2] = False  # left padding of the first row
    key_mask = key_mask[:, : start + tokens]  # as the session passes it: a view of the filled slots
    expected, expected_cache = run_with_cache(model, x, positions, start, key_mask, filled, use_native=False)
    got, got_cache = run_with_cache(model, x, positions, start, key_mask, filled, use_native=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for got_kv, expected_kv in zip(got_cache, expected_cache):  # K/V grow to ~20 through random layers
        torch.testing.assert_close(got_kv, expected_kv, rtol=1e-4, atol=1e-3)
    unmasked, _ = run_with_cache(model, x, positions, start, None, filled, use_native=True)
    if start >= 2:  # the padding mask matters
        assert not torch.allclose(unmasked[0], got[0], atol=1e-3)


def test_transformer_step_only_where_it_computes_the_same(kernels):
    model = make_transformer(4, 2, 64)
    x = torch.randn(2, 1, 64)
    with torch.inference_mode():
        assert model.native_step_applies(x)
        assert not model.native_step_applies(torch.randn(NATIVE_ROWS + 1, 1, 64))  # a prefill: torch's products
        assert not model.native_step_applies(x.double())
        with upstream_products():  # compat mode: upstream's separate F.linear products
            assert not model.native_step_applies(x)
    assert not make_transformer(4, 2, 64).native_step_applies(x)  # autograd on: training
    unfused = Transformer(model.config).eval()
    with torch.inference_mode():
        assert not unfused.native_step_applies(x)  # separate q/k/v: not the layout the kernel reads
        quantized = make_transformer(4, 2, 64)
        quantize_linears(quantized)
        assert not quantized.native_step_applies(x)


def test_generation_with_and_without_the_native_step(kernels, generator, monkeypatch):
    """Whole songs: the native step changes float32 rounding only, so greedy codes stay the same."""
    songs = [SongRequest(lyrics="[verse]\nla la la\n[chorus]\nsing", tags="pop,piano", seed=3),
             SongRequest(lyrics="", tags="jazz", seed=4)]
    sampling = SamplingParams(top_k=1, cfg_scale=1.5)
    calls = spy_on_kernel(monkeypatch, "transformer_step")
    with_native = generator.generate(songs, sampling, 12)
    assert calls  # backbone and local decoder steps
    monkeypatch.setattr(native, "_loaded", None)
    without = generator.generate(songs, sampling, 12)
    assert all(torch.equal(a, b) for a, b in zip(with_native, without))


def test_transformer_step_rejects_what_it_cannot_read(kernels):
    model = make_transformer(4, 2, 64, layers=1)
    x = torch.randn(2, 1, 64)
    rope = torch.view_as_real(model.rope_rows(torch.tensor([3])))
    tensors = model.native_tensors(model.new_cache(2, 16, torch.float32, "cpu"))
    args = (model.norm.scale, 4, 2, 1e-5)
    with torch.inference_mode():
        assert kernels.transformer_step(x, rope, None, 3, tensors, *args).shape == (2, 1, 64)
        with pytest.raises(RuntimeError, match="16 tensors per layer"):
            kernels.transformer_step(x, rope, None, 3, tensors[:15], *args)
        with pytest.raises(RuntimeError, match="layer 0: a weight has the wrong shape"):
            kernels.transformer_step(x, rope, None, 3, tensors[:4] + [tensors[4][:, :32].contiguous()] + tensors[5:],
                                     *args)
        with pytest.raises(RuntimeError, match="float weights take no scales"):
            kernels.transformer_step(x, rope, None, 3, tensors[:5] + [torch.ones(2)] + tensors[6:], *args)
        with pytest.raises(RuntimeError, match="layer 0: a KV cache has the wrong shape"):  # the cache is full
            kernels.transformer_step(x, rope, None, 16, tensors, *args)
        with pytest.raises(RuntimeError, match="key_mask"):
            kernels.transformer_step(x, rope, torch.ones(2, 3, dtype=torch.bool), 3, tensors, *args)
        with pytest.raises(RuntimeError, match="rope"):
            kernels.transformer_step(x, torch.cat([rope, rope], dim=1), None, 3, tensors, *args)  # 2 tokens


@pytest.mark.parametrize(("vocab", "top_k"), [(8197, 50), (37, 5), (37, 37), (6, 3)])
def test_native_sampler_draws_what_torch_draws(kernels, vocab, top_k, monkeypatch):
    """Same seed, same codes as the torch operations it replaces, masked (-inf) codes included."""
    torch.manual_seed(vocab + top_k)
    logits = torch.randn(64, vocab) * 3
    logits[:, ::3] = float("-inf")  # invalid codes: never drawn, even when k exceeds the valid ones
    for temperature in (1.0, 0.7, 2.5):
        native_ids = sample_among_top_k(logits, top_k, temperature, [torch.Generator().manual_seed(5)] * 64)
        with monkeypatch.context() as patch:
            patch.setattr(native, "_loaded", None)
            torch_ids = sample_among_top_k(logits, top_k, temperature, [torch.Generator().manual_seed(5)] * 64)
        assert torch.equal(native_ids, torch_ids)
        assert not (native_ids % 3 == 0).any()
        assert native_ids.dtype == torch.long and native_ids.shape == (64,)


def test_native_sampler_rejects_what_it_cannot_read(kernels):
    logits = torch.randn(2, 10)
    with pytest.raises(RuntimeError, match="noise must be"):
        kernels.sample_among_top_k(logits, 1.0, torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="noise must be"):
        kernels.sample_among_top_k(logits, 1.0, torch.ones(2, 11))
    with pytest.raises(RuntimeError, match="temperature"):
        kernels.sample_among_top_k(logits, 0.0, torch.ones(2, 4))


@pytest.mark.parametrize("sampling", [SamplingParams(top_k=1, cfg_scale=1.5), SamplingParams(top_k=7, cfg_scale=2.0),
                                      SamplingParams(top_k=40, temperature=0.8, cfg_scale=1.0),
                                      SamplingParams(top_k=5, cfg_scale=1.5, lyrics_scale=3.0)])
def test_native_local_frame_matches_the_torch_loop(kernels, generator, sampling):
    """Codebooks 1..7 of every frame in one native call = the per-codebook torch loop, with the same noise: whole
    songs, a batch of two with a weighted prompt mix, guided and not, sampled and greedy."""
    songs = [SongRequest(lyrics="[verse]\nla la la\n[chorus]\nsing", tags="pop:3,piano:1", seed=3),
             SongRequest(lyrics="", tags="jazz", seed=4)]

    def song_codes(native_frames: bool) -> list[torch.Tensor]:
        session = generator.start(songs, sampling, max_new_frames=10)
        session.sampler.fused_local_frame = native_frames
        with pytest.MonkeyPatch.context() as patch:
            calls = spy_on_kernel(patch, "local_frame")
            frames = [step.codes for step in session.iter_frames()]
        session.close()
        assert (len(calls) == len(frames)) if native_frames else not calls
        return frames

    native_frames, torch_frames = song_codes(True), song_codes(False)
    assert len(native_frames) == len(torch_frames) > 1
    assert all(torch.equal(a, b) for a, b in zip(native_frames, torch_frames))


def test_local_frame_rejects_what_it_cannot_read(kernels, generator):
    model = generator.model
    session = generator.start([SongRequest(lyrics="la", tags="pop", seed=0)], SamplingParams(top_k=3), 4)
    session.next_frame()
    rows, songs = len(session.rows), 1
    decoder = model.decoder
    c = decoder.config
    projection, heads, embeddings = local_frame_weights(model, model.dtype)
    rope = torch.view_as_real(decoder.rope_rows(torch.arange(model.num_codebooks)))[0]
    row_song, masks = session.guidance.row_song, session.sampler.later_masks
    args = dict(hidden=torch.randn(rows, c.embed_dim), first_codes=torch.zeros(songs, dtype=torch.long),
                row_song=row_song, guidance=session.sampler.matrix, masks=masks,
                noise=torch.ones(songs, 7, 3), temperature=1.0, projection=projection, heads=heads,
                embeddings=embeddings, rope=rope, layers=decoder.native_tensors(session.state.decoder),
                final_scale=decoder.norm.scale, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, eps=c.norm_eps)
    with torch.inference_mode():
        codes = kernels.local_frame(*args.values())
        assert codes.shape == (1, 7) and int(codes.max()) < generator.codebook_size
        for change, message in [(dict(first_codes=torch.tensor([10_000])), "first_codes out of range"),
                                (dict(row_song=row_song + 5), "row_song out of range"),
                                (dict(noise=torch.ones(songs, 6, 3)), "noise must be"),
                                (dict(guidance=torch.ones(songs, rows + 1)), "guidance must be"),
                                (dict(masks=masks[:, :5]), "masks"),
                                (dict(embeddings=[embeddings[0][:10], *embeddings[1:]]), "embeddings"),
                                (dict(heads=heads[:2]), "heads must be"),
                                (dict(temperature=0.0), "temperature")]:
            with pytest.raises(RuntimeError, match=message):
                kernels.local_frame(*{**args, **change}.values())
    session.close()


# --- bfloat16 weights: float32 activations inside, the weights (and caches) read as bfloat16 --------------------
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_few_rows_linear_reads_bfloat16_weights(kernels, rows):
    torch.manual_seed(rows)
    weight, bias, x = (torch.randn(131, 70).bfloat16(), torch.randn(131).bfloat16(),
                       torch.randn(rows, 70).bfloat16())
    got = kernels.few_rows_linear(x, weight, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 131)
    expected = F.linear(x.float(), weight.float(), bias.float())  # exact products, rounded once
    torch.testing.assert_close(got.float(), expected.bfloat16().float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(linear(x, weight, bias), got)  # the layers take it too
    with pytest.raises(RuntimeError, match="x must be a contiguous bfloat16"):
        kernels.few_rows_linear(x.float(), weight, bias)


def test_transformer_step_with_bfloat16_weights_matches_float32(kernels):
    """The same weights and cache values, stored as bfloat16 or float32: the same step up to the rounding of the
    new K/V written into the bfloat16 cache and of the output."""
    model = make_transformer(8, 2, 512)
    model16 = make_transformer(8, 2, 512).to(torch.bfloat16)
    model16.fuse_projections()
    with torch.no_grad():
        for p32, p16 in zip(model.parameters(), model16.parameters()):
            p32.copy_(p16.float())
    filled = [(torch.randn(2, 2, 40, 64).bfloat16(), torch.randn(2, 2, 40, 64).bfloat16()) for _ in model.layers]
    x, positions = torch.randn(2, 1, 512).bfloat16(), torch.tensor([30])
    expected, _ = run_with_cache(model, x.float(), positions, 30, None, [(k.float(), v.float()) for k, v in filled],
                                 use_native=True)
    cache = model16.new_cache(2, 40, torch.bfloat16, "cpu")
    for layer_cache, (k, v) in zip(cache, filled):
        layer_cache.k.copy_(k)
        layer_cache.v.copy_(v)
    with torch.inference_mode():
        assert model16.native_step_applies(x)
        got = model16(x, positions, start=30, cache=cache)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, rtol=2e-2, atol=2e-2)
    for layer_cache, (k, _) in zip(cache, filled):  # the new token's K went into the bfloat16 cache
        assert not torch.equal(layer_cache.k[:, :, 30], k[:, :, 30])
        assert torch.equal(layer_cache.k[:, :, :30], k[:, :, :30])


def test_local_frame_with_bfloat16_weights_agrees_with_float32(kernels, tiny_root):
    """Greedy codebooks 1..7 from bfloat16 weights = from the same values in float32, but where the rounding of the
    decoder's bfloat16 cache tips a near tie: 99 of 100 frames on the tiny model when written."""
    bf16, fp32 = load_generator(tiny_root, dtype="bfloat16"), load_generator(tiny_root, dtype="float32")
    with torch.no_grad():
        for p32, p16 in zip(fp32.model.parameters(), bf16.model.parameters()):
            p32.copy_(p16.float())

    def frame(generator, hidden):
        model = generator.model
        session = generator.start([SongRequest(lyrics="la", tags="pop", seed=0)], SamplingParams(top_k=1), 4)
        session.next_frame()
        decoder = model.decoder
        c = decoder.config
        codes = kernels.local_frame(
            hidden.to(model.dtype), torch.tensor([3]), session.guidance.row_song, session.sampler.matrix,
            session.sampler.later_masks, torch.empty(1, 7, 0), 1.0, *local_frame_weights(model, model.dtype),
            torch.view_as_real(decoder.rope_rows(torch.arange(model.num_codebooks)))[0],
            decoder.native_tensors(session.state.decoder), decoder.norm.scale, c.num_heads, c.num_kv_heads, c.norm_eps)
        session.close()
        return codes

    torch.manual_seed(0)
    with torch.inference_mode():
        same = sum(torch.equal(frame(bf16, h), frame(fp32, h))
                   for h in (torch.randn(2, 64).bfloat16().float() for _ in range(60)))
    assert same >= 50


def test_bfloat16_songs_take_the_native_path(kernels, tiny_root, monkeypatch):
    generator = load_generator(tiny_root, dtype="bfloat16")
    calls = spy_on_kernel(monkeypatch, "transformer_step", "local_frame", "few_rows_linear")
    song = SongRequest(lyrics="[verse]\nla la", tags="pop", seed=1)
    codes = generator.generate([song], SamplingParams(top_k=5), 6)[0]
    assert {"transformer_step", "local_frame", "few_rows_linear"} <= set(calls)  # backbone, local decoder, c0 head
    assert codes.shape[0] == 8 and int(codes.max()) < generator.codebook_size
