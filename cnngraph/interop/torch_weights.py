"""`weights_from_torch`: a PyTorch `state_dict()` as cnngraph weights, without importing torch.

cnngraph's weight keys are PyTorch's (`<layer>.weight`, `.bias`, `.running_mean`, `.running_var`),
so a model whose module names equal the spec's layer names needs no renaming: only the tensors
become NumPy arrays, and `num_batches_tracked` (training bookkeeping) is dropped. `compile` then
checks them like any weights (dtype, shape, finite values) and converts float64 to float32, with a
note and a range check.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import WeightsError
from ..weights import IGNORED_SUFFIXES


def weights_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """NumPy copies of the tensors (or arrays) of `state_dict`, under the same keys."""
    if not isinstance(state_dict, Mapping):
        raise WeightsError(f"expected a state_dict (a mapping of name to tensor), got {type(state_dict).__name__}")
    weights = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise WeightsError(f"state_dict keys must be strings, got {key!r}")
        if not key.endswith(IGNORED_SUFFIXES):
            weights[key] = np.ascontiguousarray(to_numpy(value))
    return weights


def to_numpy(value) -> np.ndarray:
    """A torch tensor (recognised by `.detach()`, on any device, any float dtype) or anything NumPy reads."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()  # bfloat16 has no NumPy dtype; widening it (and half) is exact
        return value.numpy()
    return np.asarray(value)
