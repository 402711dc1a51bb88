"""The encoder's positional convolution computed through FFTs.

HuBERT, wav2vec 2.0 and WavLM add a convolutional positional embedding to the CNN's frames: one
grouped 1-D convolution over the whole sequence (kernel 128, 16 groups of 48 channels for the base
shapes). It is about 3 % of the forward's arithmetic, but on a GPU in bf16 cuDNN runs this shape
with kernels that use no tensor cores, and it took most of the GPU time of an extraction pass
(``bench/gpu_check.py``'s kernel profile). The same cross-correlation through real FFTs in float32
costs a few small kernels: the spectra of the padded input and of the kernel, a per-frequency
48 x 48 complex matrix product per group, one inverse transform.

:func:`use_fft_positional_conv` switches a backbone's convolution to it in place: the module, its
parameters (weight norm included) and its state-dict keys stay as they are, only the computation of
its forward changes; gradients flow through the FFTs to the same parameters.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def _fast_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, groups: int
) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding, groups=groups)`` computed in float32 through FFTs.

    x (B, C_in, T), weight (C_out, C_in / groups, K). Returns (B, C_out, T + 2 * padding - K + 1) in
    x's dtype.
    """
    b, c_in, t = x.shape
    c_out, per_group, k = weight.shape
    if c_in != per_group * groups or c_out % groups:
        raise ValueError(
            f"conv shapes: input {tuple(x.shape)}, weight {tuple(weight.shape)}, groups {groups}"
        )
    n_out = t + 2 * padding - k + 1
    # A circular correlation of length n >= t + 2 * padding never wraps for the outputs kept.
    n = _fast_length(t + 2 * padding)
    with torch.autocast(x.device.type, enabled=False):
        spec_x = torch.fft.rfft(F.pad(x.float(), (padding, padding)), n=n)  # (B, C_in, n // 2 + 1)
        spec_w = torch.fft.rfft(weight.float(), n=n)  # (C_out, C_in / groups, n // 2 + 1)
        f = spec_x.shape[-1]
        spec_x = spec_x.view(b, groups, per_group, f)
        spec_w = spec_w.view(groups, c_out // groups, per_group, f)
        # Correlation (what conv1d computes) is a product with the kernel's conjugate spectrum.
        spec_y = torch.einsum("goif,bgif->bgof", spec_w.conj(), spec_x).reshape(b, c_out, f)
        y = torch.fft.irfft(spec_y, n=n)[..., :n_out]
        if bias is not None:
            y = y + bias.float()[None, :, None]
    return y.to(x.dtype)


def _conv_forward(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    return fft_conv1d(x, conv.weight, conv.bias, int(conv.padding[0]), conv.groups)


def positional_conv(model: nn.Module) -> nn.Conv1d:
    """The positional convolution of a HuBERT / wav2vec 2.0 / WavLM encoder."""
    conv = getattr(getattr(getattr(model, "encoder", None), "pos_conv_embed", None), "conv", None)
    if not isinstance(conv, nn.Conv1d):
        raise TypeError(f"{type(model).__name__} has no encoder.pos_conv_embed.conv (a Conv1d)")
    return conv


def use_fft_positional_conv(model: nn.Module, enabled: bool = True) -> None:
    """Compute ``model``'s positional convolution through FFTs (``enabled``) or with conv1d again."""
    conv = positional_conv(model)
    if enabled:
        if conv.stride != (1,) or conv.dilation != (1,) or not isinstance(conv.padding, tuple):
            raise ValueError("the FFT positional convolution needs stride 1, dilation 1 and integer padding")
        conv.forward = partial(_conv_forward, conv)  # an instance attribute: parameters and keys unchanged
    else:
        conv.__dict__.pop("forward", None)


def uses_fft_positional_conv(model: nn.Module) -> bool:
    return "forward" in positional_conv(model).__dict__


def use_on_gpu(model: nn.Module, device: str | torch.device) -> None:
    """The FFT form wherever ``model`` runs on a GPU (where gmptl runs bf16 autocast and cuDNN's kernels for
    this shape are slow); conv1d stays on the CPU, where it is the faster of the two."""
    if torch.device(device).type == "cuda":
        use_fft_positional_conv(model)
