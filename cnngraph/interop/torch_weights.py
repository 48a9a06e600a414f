"""`weights_from_torch`: a PyTorch `state_dict()` as cnngraph weights, without importing torch.

cnngraph's weight keys are PyTorch's (`<layer>.weight`, `.bias`, `.running_mean`, `.running_var`),
so a model whose module names equal the spec's layer names needs no renaming: only the tensors
become float32 NumPy arrays, and `num_batches_tracked` (training bookkeeping) is dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import WeightsError
from ..weights import IGNORED_SUFFIXES


def weights_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """float32 NumPy copies of the tensors (or arrays) of `state_dict`, under the same keys."""
    if not isinstance(state_dict, Mapping):
        raise WeightsError(f"expected a state_dict (a mapping of name to tensor), got {type(state_dict).__name__}")
    weights = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise WeightsError(f"state_dict keys must be strings, got {key!r}")
        if key.endswith(IGNORED_SUFFIXES):
            continue
        array = to_numpy(value)
        if array.dtype.kind != "f":
            raise WeightsError(f'key "{key}" has dtype {array.dtype}; weights must be floating point')
        weights[key] = np.ascontiguousarray(array, dtype=np.float32)
    return weights


def to_numpy(value) -> np.ndarray:
    """A torch tensor (recognised by `.detach()`, on any device, any float dtype) or anything NumPy reads."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16 and half have no NumPy view that keeps their values exact
        return value.numpy()
    return np.asarray(value)
