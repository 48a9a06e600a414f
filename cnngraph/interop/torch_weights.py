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

from ..weights import IGNORED_SUFFIXES, as_arrays


def weights_from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """NumPy copies of the tensors (or arrays) of `state_dict`, under the same keys."""
    return {key: np.ascontiguousarray(value) for key, value in as_arrays(state_dict, "a state_dict").items()
            if not key.endswith(IGNORED_SUFFIXES)}
