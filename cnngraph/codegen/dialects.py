"""The two C dialects kernels are rendered into. Templates are written once in a neutral C subset
using the words in `WORDS`; a dialect is just the table of how to spell each word, rendered as a
block of #defines at the top of every kernel (so each file compiles on its own).

Tensor-core words (`TF32`, `MMA_TF32`, `MMA_SCRATCH`) and asynchronous copies (`CP_ASYNC4`,
`CP_ASYNC_COMMIT`, `CP_ASYNC_WAIT`, `CP_ASYNC_STATE`) are spelled as inline PTX in CUDA and as an
exact emulation in OpenCL: `MMA_TF32` there computes, for each lane, exactly the accumulator
elements the PTX ISA assigns to it from the fragment registers the lanes hold, so a kernel's
fragment index math is what runs on PoCL; an async copy writes NaN into its destination when it is
issued and the data only at the `CP_ASYNC_WAIT` that completes its group, so a wait that is too
weak, or a copy never committed, shows up as NaN (see `TENSOR_CORE_HELPERS`)."""

from __future__ import annotations

from dataclasses import dataclass

WORDS = ("KERNEL", "GLOBAL", "SHARED", "RESTRICT", "BARRIER()", "BLOCK_X", "BLOCK_Y", "BLOCK_Z", "THREAD_X",
         "UNROLL", "ALIGNED16", "INLINE", "NEG_INF",
         "EXPF(x)", "TANHF(x)", "ERFF(x)", "SQRTF(x)", "TF32(x)", "MMA_TF32(d, a, b)", "MMA_SCRATCH(warps)",
         "CP_ASYNC_STATE(n)", "CP_ASYNC4(dst, src, pred)", "CP_ASYNC_COMMIT()", "CP_ASYNC_WAIT(n)")

# max and min that return NaN when either side is NaN, as PyTorch's relu, clamp and max pooling do
# (C's fmaxf/fminf return the other operand, which would turn a NaN input into 0 or 6)
HELPERS = """INLINE float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }
INLINE float min_nan(float a, float b) { return (a < b || a != a) ? a : b; }
"""


# TF32 (round to a 10-bit mantissa, to nearest with ties away from zero, as cvt.rna.tf32.f32 does)
# and the warp-wide mma.sync.aligned.m16n8k8 TF32 product, per dialect. Fragments (PTX ISA, "Matrix
# fragments for mma.m16n8k8"; g = lane / 4, t = lane % 4): a0 (row g, col t), a1 (g+8, t), a2 (g, t+4),
# a3 (g+8, t+4); b0 (row t, col g), b1 (t+4, g); d_i at row g + 8*(i/2), col 2t + i%2.
TENSOR_CORE_HELPERS = {
    "cuda": """INLINE float tf32_round(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}
INLINE void mma_tf32(float* d, const float* a, const float* b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
                   "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}
/* 4 bytes global -> shared, bypassing registers; pred false: zero-fill, the source is not read */
INLINE void cp_async4(float* dst, const float* src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(pred ? 4 : 0));
}
""",
    # Each lane publishes its fragment registers to its warp's slice of local memory; after a barrier
    # it sums exactly its own four accumulator elements in the PTX layout. The hardware reads only the
    # TF32 bits of an operand (it truncates one that was never rounded), and so does the emulation.
    "opencl": """INLINE float tf32_round(float x) {
    const uint u = as_uint(x);
    return (u & 0x7f800000u) == 0x7f800000u ? x : as_float((u + 0x1000u) & 0xffffe000u);
}
INLINE float tf32_bits(float x) { return as_float(as_uint(x) & 0xffffe000u); }
INLINE void mma_tf32(float* d, const float* a, const float* b, __local float* sa, __local float* sb) {
    const int lane = get_local_id(0) % 32;
    __local float* wa = sa + (get_local_id(0) / 32) * 128;  /* this warp's 32 lanes x a0..a3 */
    __local float* wb = sb + (get_local_id(0) / 32) * 64;   /* and x b0, b1 */
    for (int i = 0; i < 4; ++i) wa[lane * 4 + i] = a[i];
    wb[lane * 2] = b[0];
    wb[lane * 2 + 1] = b[1];
    barrier(CLK_LOCAL_MEM_FENCE);
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float s = 0.0f;
        for (int kk = 0; kk < 8; ++kk) {
            const float av = wa[((row % 8) * 4 + kk % 4) * 4 + row / 8 + 2 * (kk / 4)];  /* held by lane (row%8, kk%4) */
            const float bv = wb[(col * 4 + kk % 4) * 2 + kk / 4];                         /* held by lane (col, kk%4) */
            s += tf32_bits(av) * tf32_bits(bv);
        }
        d[i] += s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);  /* before the next product overwrites the published fragments */
}
/* This work-item's pending async copies (destination, value, group) complete when their group is
   older than `done_below`; the rest stay pending. */
INLINE void cp_async_wait(__local float** dst, float* value, int* group, int* count, int done_below) {
    int kept = 0;
    for (int i = 0; i < *count; ++i) {
        if (group[i] < done_below) {
            *dst[i] = value[i];
        } else {
            dst[kept] = dst[i];
            value[kept] = value[i];
            group[kept] = group[i];
            ++kept;
        }
    }
    *count = kept;
}
""",
}


@dataclass(frozen=True)
class Dialect:
    name: str
    suffix: str           # file suffix of a rendered kernel
    spelling: dict        # word -> how this dialect writes it

    def prelude(self, tensor_cores: bool = False) -> str:
        lines = [f"/* cnngraph kernel, {self.name} dialect */"]
        for word in WORDS:
            lines.append(f"#define {word} {self.spelling[word]}".rstrip())
        return "\n".join(lines) + "\n" + HELPERS + (TENSOR_CORE_HELPERS[self.name] if tensor_cores else "")

    def render(self, body: str) -> str:
        """The kernels of `body` in this dialect; the tensor-core helpers only where a kernel uses
        them (their PTX needs sm_80, and a module for an older card must still compile)."""
        return self.prelude(tensor_cores="TF32(" in body) + "\n" + body


CUDA = Dialect("cuda", ".cu", {
    "KERNEL": 'extern "C" __global__', "GLOBAL": "", "SHARED": "__shared__", "RESTRICT": "__restrict__",
    "BARRIER()": "__syncthreads()", "BLOCK_X": "((int)blockIdx.x)", "BLOCK_Y": "((int)blockIdx.y)",
    "BLOCK_Z": "((int)blockIdx.z)", "UNROLL": '_Pragma("unroll")', "ALIGNED16": "__attribute__((aligned(16)))",
    "THREAD_X": "((int)threadIdx.x)", "EXPF(x)": "expf(x)", "TANHF(x)": "tanhf(x)", "ERFF(x)": "erff(x)",
    "SQRTF(x)": "sqrtf(x)", "INLINE": "__device__ __forceinline__", "NEG_INF": "(-__int_as_float(0x7f800000))",
    "TF32(x)": "tf32_round(x)", "MMA_TF32(d, a, b)": "mma_tf32(d, a, b)", "MMA_SCRATCH(warps)": "",
    "CP_ASYNC_STATE(n)": "", "CP_ASYNC4(dst, src, pred)": "cp_async4(dst, src, pred)",
    "CP_ASYNC_COMMIT()": 'asm volatile("cp.async.commit_group;")',
    "CP_ASYNC_WAIT(n)": 'asm volatile("cp.async.wait_group %0;" :: "n"(n))',
})

OPENCL = Dialect("opencl", ".cl", {
    "KERNEL": "__kernel", "GLOBAL": "__global", "SHARED": "__local", "RESTRICT": "restrict",
    "BARRIER()": "barrier(CLK_LOCAL_MEM_FENCE)", "BLOCK_X": "((int)get_group_id(0))",
    "BLOCK_Y": "((int)get_group_id(1))", "BLOCK_Z": "((int)get_group_id(2))",
    "UNROLL": '_Pragma("unroll")', "ALIGNED16": "__attribute__((aligned(16)))", "THREAD_X": "((int)get_local_id(0))", "EXPF(x)": "exp(x)",
    "TANHF(x)": "tanh(x)", "ERFF(x)": "erf(x)", "SQRTF(x)": "sqrt(x)", "INLINE": "static inline",
    "NEG_INF": "(-INFINITY)", "TF32(x)": "tf32_round(x)", "MMA_TF32(d, a, b)": "mma_tf32(d, a, b, mma_a, mma_b)",
    "MMA_SCRATCH(warps)": "__local float mma_a[(warps) * 128]; __local float mma_b[(warps) * 64]",
    "CP_ASYNC_STATE(n)": "__local float* cpq_dst[n]; float cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                         "int cpq_groups = 0; const int cpq_capacity = n",
    # a copy beyond the queue's capacity (a kernel that waits too little) never lands: NaN stays
    "CP_ASYNC4(dst, src, pred)": "do { const bool p_ = (pred); const float v_ = p_ ? *(src) : 0.0f; "
                                 "*(dst) = NAN; if (cpq_count < cpq_capacity) { cpq_dst[cpq_count] = (dst); "
                                 "cpq_value[cpq_count] = v_; cpq_group[cpq_count++] = cpq_groups; } } while (0)",
    "CP_ASYNC_COMMIT()": "++cpq_groups",
    "CP_ASYNC_WAIT(n)": "cp_async_wait(cpq_dst, cpq_value, cpq_group, &cpq_count, cpq_groups - (n))",
})

DIALECTS = {d.name: d for d in (CUDA, OPENCL)}
