"""The one interface every backend implements, and the registry of backends by device name.

A backend class says whether it can run here (`unavailable`), how much memory a network may take
by default (`memory_limit`), how many copies of the weights and how much scratch it keeps (for the
memory check before anything is allocated), and builds itself from a `Plan` (see model.py). An
instance runs the network: `run(inputs) -> outputs` by name, and `poison()` fills its activation
memory with NaN so the tests see any element no kernel writes."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import numpy as np

from ..precision import element_bytes

BACKENDS: dict[str, type["Backend"]] = {}  # device name -> backend class


class Backend:
    device: ClassVar[str] = "?"
    weight_copies: ClassVar[int] = 1   # weight arrays held: the given ones, and any rearranged copy

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.device != "?":
            BACKENDS[cls.device] = cls

    @classmethod
    def unavailable(cls) -> str | None:
        """None when this backend can run here, else why not (one line)."""
        return None

    @classmethod
    def selecting(cls, index: int | None) -> contextlib.AbstractContextManager:
        """A context in which the class's queries and a new instance use device `index` of this
        kind (`device="cuda:1"`); only a backend with several devices takes an index."""
        return contextlib.nullcontext()

    @classmethod
    def unsupported_precision(cls, precision: str) -> str | None:
        """None when this backend runs `precision` here, else why not (one line)."""
        return None

    @classmethod
    def memory_limit(cls) -> tuple[int | None, str]:
        """The default limit in bytes (None: unknown) and where it comes from, in words."""
        raise NotImplementedError

    @classmethod
    def arena_element_bytes(cls, precision: str) -> int:
        """Bytes of one activation element in this backend's arena at `precision`."""
        return element_bytes(precision)

    @classmethod
    def scratch_bytes(cls, plan) -> int:
        """Bytes of temporaries beyond the weights and the activation arena, at most."""
        raise NotImplementedError

    def __init__(self, plan, options: dict):
        """Build for `plan` (allocate, compile kernels); `options`: compile's backend options
        (cuda_graph, autotune), each backend taking those it knows."""
        self.plan = plan

    @property
    def device_name(self) -> str:
        """The device this instance runs on, as compile's `device` takes it."""
        return self.device

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_observed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every computed node's output (NCHW, a fresh array) by node, captured as soon as the node
        is done, before the memory plan lets a later node reuse its place (for `cnngraph check`).
        Aliases (free reshapes) are left out: they show their input's values."""
        raise NotImplementedError

    def time_launches(self, inputs: dict[str, np.ndarray]) -> list[tuple[tuple[str, str], float]]:
        """One call, each kernel (NumPy: each node) timed on the device: ((kernel, node), seconds)
        in execution order (for `cnngraph profile`)."""
        raise NotImplementedError

    def poison(self) -> None:
        raise NotImplementedError
