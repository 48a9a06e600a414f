"""Epilogues: elementwise steps fused after a conv2d/linear and applied to its result before the
single store (in registers on the GPU, in place on the CPU). Steps run in order, after the op's
own bias and `activation` field:
  ("add", i)                    adds the node's i-th residual input (the inputs after the op's own)
  ("activation", Activation)    applies an activation
  ("scale_shift", (s, t))       v * s[c] + t[c] per channel c: a batch norm that could not fold
                                into the weights because an activation came first (float32 arrays)
conv -> add -> relu is [("add", 0), ("activation", Relu)]."""

from __future__ import annotations

import numpy as np

from .activation import apply_activation

Epilogue = list[tuple[str, object]]


def residual_count(epilogue: Epilogue) -> int:
    return sum(1 for kind, _ in epilogue if kind == "add")


def scale_shifts(epilogue: Epilogue) -> list[tuple[np.ndarray, np.ndarray]]:
    """The per-channel (scale, shift) pairs, in order: kernels take them as constants."""
    return [step for kind, step in epilogue if kind == "scale_shift"]


def label(epilogue: Epilogue) -> str:
    names = {"add": "add", "scale_shift": "batch_norm2d"}
    return "+".join(names.get(kind) or step.label for kind, step in epilogue)


def apply_numpy(out: np.ndarray, epilogue: Epilogue, residuals: list[np.ndarray]) -> np.ndarray:
    """In place on `out` in the backend's layout: channels are the last axis."""
    for kind, step in epilogue:
        if kind == "add":
            out += residuals[step]
        elif kind == "scale_shift":
            out *= step[0]
            out += step[1]
        else:
            apply_activation(step, out)
    return out


def to_c(epilogue: Epilogue, residual_names: list[str]) -> list[str]:
    """C statements on `v` (the value of output element `idx`, channel `k`) in the neutral kernel
    dialect; the j-th scale/shift pair is read from the constants `s{j}` and `t{j}`."""
    lines, pairs = [], 0
    for kind, step in epilogue:
        if kind == "add":
            lines.append(f"v += {residual_names[step]}[idx];")
        elif kind == "scale_shift":
            lines.append(f"v = v * s{pairs}[k] + t{pairs}[k];")
            pairs += 1
        else:
            lines.append(f"v = {step.c_expr('v')};")
    return lines
