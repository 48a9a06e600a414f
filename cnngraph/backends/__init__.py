"""Backends execute a compiled graph: `numpy` (always available) and, with a GPU, `cuda`."""
