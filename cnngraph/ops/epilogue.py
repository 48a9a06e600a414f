"""Epilogues: elementwise steps fused after a conv2d/linear and applied to its result before the
single store (in registers on the GPU, in place on the CPU). A step is `("add", i)`, adding the
node's i-th residual input (the inputs after the op's own), or `("activation", Activation)`.
Steps run in order, after the op's own bias and `activation` field: conv -> add -> relu is
[("add", 0), ("activation", Relu)]."""

from __future__ import annotations

import numpy as np

from .activation import apply_activation

Epilogue = list[tuple[str, object]]


def residual_count(epilogue: Epilogue) -> int:
    return sum(1 for kind, _ in epilogue if kind == "add")


def label(epilogue: Epilogue) -> str:
    return "+".join("add" if kind == "add" else step.label for kind, step in epilogue)


def apply_numpy(out: np.ndarray, epilogue: Epilogue, residuals: list[np.ndarray]) -> np.ndarray:
    for kind, step in epilogue:
        if kind == "add":
            out += residuals[step]
        else:
            apply_activation(step, out)
    return out


def to_c(epilogue: Epilogue, residual_names: list[str]) -> list[str]:
    """C statements on `v` (the value of output element `idx`) in the neutral kernel dialect."""
    return [f"v += {residual_names[step]}[idx];" if kind == "add" else f"v = {step.c_expr('v')};"
            for kind, step in epilogue]
