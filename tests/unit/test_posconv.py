"""The FFT positional convolution computes what conv1d computes, for the forward and the gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F

from gmptl.config import ModelConfig
from gmptl.models.backbone import build_backbone
from gmptl.models.posconv import (
    fft_conv1d,
    positional_conv,
    use_fft_positional_conv,
    use_on_gpu,
    uses_fft_positional_conv,
)


@pytest.mark.parametrize(("c", "groups", "k", "t"), [(64, 16, 16, 37), (96, 2, 128, 300), (8, 1, 4, 5)])
def test_fft_conv1d_equals_conv1d(c, groups, k, t):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, c, t, generator=g, dtype=torch.float64)
    w = torch.randn(c, c // groups, k, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    ref = F.conv1d(x, w, b, padding=k // 2, groups=groups)
    got = fft_conv1d(x.float(), w.float(), b.float(), k // 2, groups)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert (got.double() - ref).norm() / ref.norm() < 1e-5


@pytest.mark.parametrize("architecture", ["hubert", "wav2vec2", "wavlm"])
def test_a_backbone_with_it_gives_the_same_states_and_gradients(architecture):
    model = build_backbone(ModelConfig(backbone="tiny", architecture=architecture)).train(False)
    fast = copy.deepcopy(model)
    use_fft_positional_conv(fast)
    assert uses_fft_positional_conv(fast) and not uses_fft_positional_conv(model)
    assert fast.state_dict().keys() == model.state_dict().keys()  # saved and loaded as before
    x = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1))
    a, b = model(x).last_hidden_state, fast(x).last_hidden_state
    assert (a - b).norm() / a.norm() < 1e-4
    r = torch.randn(a.shape, generator=torch.Generator().manual_seed(2))  # a loss with no cancellation
    (a * r).sum().backward()
    (b * r).sum().backward()
    ga = [p.grad for p in positional_conv(model).parameters()]
    gb = [p.grad for p in positional_conv(fast).parameters()]
    for u, v in zip(ga, gb, strict=True):
        assert (u - v).norm() / u.norm() < 1e-3
    copied = copy.deepcopy(fast)  # the switch travels with a copy, bound to the copy's own parameters
    assert uses_fft_positional_conv(copied)
    assert (copied(x).last_hidden_state - b).norm() / b.norm() < 1e-6
    use_fft_positional_conv(fast, enabled=False)
    assert not uses_fft_positional_conv(fast)
    assert torch.equal(fast(x).last_hidden_state, model(x).last_hidden_state)


@pytest.mark.gpu
def test_fft_positional_conv_on_gpu_matches_cudnn_in_fp32():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 768, 700, generator=g).cuda()
    w = torch.randn(768, 48, 128, generator=g).cuda() * 0.02
    with torch.backends.cudnn.flags(allow_tf32=False):
        ref = F.conv1d(x, w, None, padding=64, groups=16)
    got = fft_conv1d(x, w, None, 64, 16)
    assert (got - ref).norm() / ref.norm() < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert fft_conv1d(x.bfloat16(), w, None, 64, 16).dtype == torch.bfloat16


def test_the_fft_form_is_used_on_a_gpu_only():
    model = build_backbone(ModelConfig(backbone="tiny"))
    use_on_gpu(model, "cpu")
    assert not uses_fft_positional_conv(model)
    use_on_gpu(model, "cuda:0")  # switches the module; moving it to a GPU is the caller's business
    assert uses_fft_positional_conv(model)
