import pytest
import torch
import torch.nn.functional as F

from heartmula.nn import native
from heartmula.nn.layers import NATIVE_ROWS, linear


@pytest.fixture
def kernels():
    reason = native.unavailable_reason()
    if reason is not None:
        pytest.skip(f"native kernels not used here: {reason}")
    built = native.kernels()
    assert built is not None, "this CPU can use the native kernels, but they did not build"
    return built


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
    linear(torch.randn(2, 48), weight, few_rows_transposed=False)  # upstream's bits: F.linear
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
