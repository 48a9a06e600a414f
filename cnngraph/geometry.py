"""Sizes shared by the ops' shape rules, the kernel lowering, the templates and the ONNX importer:
output-size formulas, "same" padding, ceiling division, and a convolution's geometry in one object."""

from __future__ import annotations

from dataclasses import dataclass


def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for positive b: the number of b-sized pieces that cover a."""
    return -(-a // b)


def conv_out_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """PyTorch's output size: floor((size + pads - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def same_pad(kernel: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of "same" at stride 1: dilation*(kernel-1) in total, the smaller half
    first, as PyTorch pads."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def pool_out_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int:
    span = size + 2 * pad - kernel
    out = (cdiv(span, stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # PyTorch: the last window must start inside the input or the left padding
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """One batched 2-D convolution (a linear layer is the 1x1 case on a 1x1 image): input (N, C, H, W),
    output (N, K, P, Q), kernel KH x KW, stride, top/left padding, dilation and groups."""
    n: int
    c: int
    h: int
    w: int
    k: int
    p: int
    q: int
    kh: int = 1
    kw: int = 1
    sh: int = 1
    sw: int = 1
    pt: int = 0
    pl: int = 0
    dh: int = 1
    dw: int = 1
    groups: int = 1

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.k // self.groups

    @property
    def taps(self) -> int:
        """Kernel positions, KH * KW."""
        return self.kh * self.kw

    @property
    def reduction(self) -> int:
        """Products summed per output, C/groups * KH * KW: the GEMM's reduction length."""
        return self.cg * self.taps

    @property
    def pixels(self) -> int:
        """Output pixels per sample and channel, P * Q."""
        return self.p * self.q
