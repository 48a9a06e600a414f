"""Epilogue steps: elementwise work fused after a node's own result and applied to it before the
single store (in registers on the GPU, in place on the CPU). Steps run in order, after the op's
own bias and `activation` field:
  Residual(i, ...)     adds the node's residual inputs i, ... (the inputs after the op's own): one
                       `add` layer of two or more operands
  Activate(act)        applies an activation
  ScaleShift(s, t)     v * s[c] + t[c] per channel c: a batch norm that could not fold into the
                       weights because an activation came first (float32 arrays)
conv -> add -> relu is (Residual((0,)), Activate(Relu)).

Each step knows its label (for the node's display op), its NumPy code and its C code; the kernel
reads the j-th ScaleShift's arrays from the constants `s{j}` and `t{j}`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .activation import Activation, apply_activation


@dataclass(frozen=True)
class Residual:
    indices: tuple[int, ...]
    label: ClassVar[str] = "add"

    def apply_numpy(self, out: np.ndarray, residuals: list[np.ndarray]) -> None:
        for i in self.indices:
            out += residuals[i]

    def c_code(self, residual_names: list[str], pair: int) -> str:
        return "\n".join(f"v += LOAD({residual_names[i]}[idx]);" for i in self.indices)


@dataclass(frozen=True)
class Activate:
    activation: Activation

    @property
    def label(self) -> str:
        return self.activation.label

    def apply_numpy(self, out: np.ndarray, residuals: list[np.ndarray]) -> None:
        apply_activation(self.activation, out)

    def c_code(self, residual_names: list[str], pair: int) -> str:
        return f"v = {self.activation.c_expr('v')};"


@dataclass(frozen=True, eq=False)
class ScaleShift:
    scale: np.ndarray = field(repr=False)
    shift: np.ndarray = field(repr=False)
    label: str = "batch_norm2d"  # the layer it came from

    def apply_numpy(self, out: np.ndarray, residuals: list[np.ndarray]) -> None:
        out *= self.scale
        out += self.shift

    def c_code(self, residual_names: list[str], pair: int) -> str:
        return f"v = v * s{pair}[k] + t{pair}[k];"


Step = Residual | Activate | ScaleShift
Epilogue = tuple[Step, ...]


def residual_count(epilogue: Epilogue) -> int:
    return sum(len(step.indices) for step in epilogue if isinstance(step, Residual))


def scale_shifts(epilogue: Epilogue) -> list[ScaleShift]:
    """The per-channel scale + shift steps, in order: kernels take their arrays as constants."""
    return [step for step in epilogue if isinstance(step, ScaleShift)]


def label(epilogue: Epilogue) -> str:
    return "+".join(step.label for step in epilogue)


def apply_numpy(out: np.ndarray, epilogue: Epilogue, residuals: list[np.ndarray]) -> np.ndarray:
    """In place on `out` in the backend's layout: channels are the last axis."""
    for step in epilogue:
        step.apply_numpy(out, residuals)
    return out


def to_c(epilogue: Epilogue, residual_names: list[str]) -> list[str]:
    """C statements on `v` (the value of output element `idx`, channel `k`) in the neutral kernel
    dialect."""
    lines, pairs = [], 0
    for step in epilogue:
        lines.append(step.c_code(residual_names, pairs))
        pairs += isinstance(step, ScaleShift)
    return lines
