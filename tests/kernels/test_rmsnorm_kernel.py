"""The Triton RMSNorm kernels against their float64 reference, forward and backward.

Tolerance rule (STYLE.md §10): the kernel's max abs error against the float64 reference is
at most twice that of the PyTorch reference computed in the same dtypes, plus one unit
roundoff of the dtype at the compared tensor's magnitude. Without a GPU the kernels run
under TRITON_INTERPRET=1 (conftest.py). The interpreter (triton 3.x) casts fp32 to bf16 by
truncation, not round-to-nearest as a GPU does, so its bf16 outputs are up to about twice
the reference's error (1.96x for y on (4, 9, 96)); on a GPU they are closer.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from triforge.kernels.rmsnorm import check_norm_impl, rms_norm, rms_norm_reference  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
EPS = 1e-5
# (shape, x dtype, weight dtype): odd row lengths, one element, more row blocks than the
# backward has programs (300 rows of 256: 10 blocks of 32 on 8 programs), a row of 5000
SHAPES = [((2, 7, 64), torch.float32, torch.float32), ((3, 33), torch.float32, torch.float32),
          ((1, 1, 1), torch.float32, torch.float32), ((300, 256), torch.float32, torch.float32),
          ((3, 5000), torch.float32, torch.float32), ((4, 9, 96), torch.bfloat16, torch.bfloat16),
          ((4, 9, 96), torch.bfloat16, torch.float32), ((300, 256), torch.float16, torch.float16)]


def within_rule(kernel: torch.Tensor, same_dtype: torch.Tensor, exact: torch.Tensor) -> bool:
    exact = exact.double()
    unit = torch.finfo(kernel.dtype).eps / 2 * max(exact.abs().max().item(), 1.0)
    bound = 2 * (same_dtype.double() - exact).abs().max().item() + unit
    return (kernel.double() - exact).abs().max().item() <= bound


def forward_backward(impl: str, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor, dtypes):
    x = x.detach().to(DEVICE, dtypes[0]).requires_grad_()
    w = w.detach().to(DEVICE, dtypes[1]).requires_grad_()
    y = rms_norm_reference(x, w, EPS) if impl == "reference" else rms_norm(x, w, EPS, impl=impl)
    y.backward(dy.to(DEVICE, y.dtype))
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize("shape,x_dtype,w_dtype", SHAPES)
def test_forward_and_backward_match_the_reference(shape, x_dtype, w_dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 3
    w = 1 + 0.1 * torch.randn(shape[-1], dtype=torch.float64, generator=g)
    dy = torch.randn(shape, dtype=torch.float64, generator=g)
    # The exact values are those of the inputs as both implementations get them (rounded
    # to the tested dtypes): the rounding of the inputs is no implementation's error.
    y_dtype = torch.result_type(x.to(x_dtype), w.to(w_dtype))
    x, w, dy = x.to(x_dtype).double(), w.to(w_dtype).double(), dy.to(y_dtype).double()
    exact = forward_backward("reference", x, w, dy, (torch.float64, torch.float64))
    same = forward_backward("reference", x, w, dy, (x_dtype, w_dtype))
    fused = forward_backward("triton", x, w, dy, (x_dtype, w_dtype))
    for name, k, s, e in zip(("y", "dx", "dw"), fused, same, exact, strict=True):
        assert k.dtype == s.dtype and k.shape == s.shape, name
        assert within_rule(k, s, e), f"{name}: {(k.double() - e).abs().max().item():.3e}"


def test_a_non_contiguous_input_and_its_gradient_keep_their_shape():
    x = torch.randn(6, 4, 32, device=DEVICE).transpose(0, 1).requires_grad_()
    w = torch.ones(32, device=DEVICE, requires_grad=True)
    y = rms_norm(x, w, EPS, impl="triton")
    y.sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    rms_norm_reference(ref_x, w.detach(), EPS).sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    torch.testing.assert_close(y, rms_norm_reference(x.detach(), w.detach(), EPS))
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_an_impl_that_cannot_run_here_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"model.norm_impl='fast' is not one of"):
        check_norm_impl("fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"needs a CUDA GPU and NVIDIA apex.*norm_impl=triton"):
            check_norm_impl("apex")
        with pytest.raises(ValueError, match=r"need a CUDA GPU \(or TRITON_INTERPRET=1"):
            check_norm_impl("triton", interpreter=False)
        check_norm_impl("triton", interpreter=True)
