"""The two C dialects kernels are rendered into. Templates are written once in a neutral C subset
using the words in `WORDS`; a dialect is just the table of how to spell each word, rendered as a
block of #defines at the top of every kernel (so each file compiles on its own)."""

from __future__ import annotations

from dataclasses import dataclass

WORDS = ("KERNEL", "GLOBAL", "SHARED", "RESTRICT", "BARRIER()", "BLOCK_X", "BLOCK_Y", "BLOCK_Z", "THREAD_X",
         "UNROLL", "ALIGNED16", "INLINE", "NEG_INF",
         "EXPF(x)", "TANHF(x)", "ERFF(x)", "SQRTF(x)")

# max and min that return NaN when either side is NaN, as PyTorch's relu, clamp and max pooling do
# (C's fmaxf/fminf return the other operand, which would turn a NaN input into 0 or 6)
HELPERS = """INLINE float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }
INLINE float min_nan(float a, float b) { return (a < b || a != a) ? a : b; }
"""


@dataclass(frozen=True)
class Dialect:
    name: str
    suffix: str           # file suffix of a rendered kernel
    spelling: dict        # word -> how this dialect writes it

    def prelude(self) -> str:
        lines = [f"/* cnngraph kernel, {self.name} dialect */"]
        for word in WORDS:
            lines.append(f"#define {word} {self.spelling[word]}".rstrip())
        return "\n".join(lines) + "\n" + HELPERS

    def render(self, body: str) -> str:
        return self.prelude() + "\n" + body


CUDA = Dialect("cuda", ".cu", {
    "KERNEL": 'extern "C" __global__', "GLOBAL": "", "SHARED": "__shared__", "RESTRICT": "__restrict__",
    "BARRIER()": "__syncthreads()", "BLOCK_X": "((int)blockIdx.x)", "BLOCK_Y": "((int)blockIdx.y)",
    "BLOCK_Z": "((int)blockIdx.z)", "UNROLL": '_Pragma("unroll")', "ALIGNED16": "__attribute__((aligned(16)))",
    "THREAD_X": "((int)threadIdx.x)", "EXPF(x)": "expf(x)", "TANHF(x)": "tanhf(x)", "ERFF(x)": "erff(x)",
    "SQRTF(x)": "sqrtf(x)", "INLINE": "__device__ __forceinline__", "NEG_INF": "(-__int_as_float(0x7f800000))",
})

OPENCL = Dialect("opencl", ".cl", {
    "KERNEL": "__kernel", "GLOBAL": "__global", "SHARED": "__local", "RESTRICT": "restrict",
    "BARRIER()": "barrier(CLK_LOCAL_MEM_FENCE)", "BLOCK_X": "((int)get_group_id(0))",
    "BLOCK_Y": "((int)get_group_id(1))", "BLOCK_Z": "((int)get_group_id(2))",
    "UNROLL": '_Pragma("unroll")', "ALIGNED16": "__attribute__((aligned(16)))", "THREAD_X": "((int)get_local_id(0))", "EXPF(x)": "exp(x)",
    "TANHF(x)": "tanh(x)", "ERFF(x)": "erf(x)", "SQRTF(x)": "sqrt(x)", "INLINE": "static inline",
    "NEG_INF": "(-INFINITY)",
})

DIALECTS = {d.name: d for d in (CUDA, OPENCL)}
