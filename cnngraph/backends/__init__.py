"""Backends execute a compiled graph: `numpy` (always available), `cuda` (CuPy, with a GPU) and
`opencl` (PyOpenCL); the last two run the lowered Program of generated kernels."""
