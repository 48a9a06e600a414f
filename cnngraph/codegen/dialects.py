"""The two C dialects kernels are rendered into. Templates are written once in a neutral C subset
using the words in `WORDS`; a dialect is just the table of how to spell each word, rendered as a
block of #defines at the top of every kernel (so each file compiles on its own).

Tensor-core words (`TF32`, `MMA_TF32`, `MMA_SCRATCH`; for 16-bit operands `MMA_F16`, `MMA_BF16`,
`LDMATRIX_X4`, `LDMATRIX_X4_TRANS`, `LDMATRIX_X2_TRANS`) and asynchronous copies of 4, 8 or 16
bytes (`CP_ASYNC4`, `CP_ASYNC8`, `CP_ASYNC16`, `CP_ASYNC_STATE` of float32 values; `CP_ASYNC4_HALF`,
`CP_ASYNC8_HALF`, `CP_ASYNC16_HALF`, `CP_ASYNC_STATE_HALF` of 16-bit ones; `CP_ASYNC_COMMIT`,
`CP_ASYNC_WAIT`) are spelled as inline PTX in CUDA and as an exact
emulation in OpenCL: `MMA_TF32` there computes, for each lane, exactly the accumulator elements
the PTX ISA assigns to it from the fragment registers the lanes hold, so a kernel's fragment index
math is what runs on PoCL (`LDMATRIX_*` likewise gives each lane exactly the elements of the rows
the other lanes point at); an async copy writes NaN (0x7fff for a 16-bit value) into its
destination when it is issued and the data only at the `CP_ASYNC_WAIT` that completes its group,
so a wait that is too weak, or a copy never committed, shows up as NaN (see `TENSOR_CORE_HELPERS`).
The warp shuffle `SHFL_XOR` (its OpenCL scratch declared by `WARP_SCRATCH`) is CUDA's own, and an
exchange through local memory in OpenCL (`WARP_HELPERS`).

Stored tensors (activations, and the GEMM weights) are `ACT` elements, read with `LOAD(x)` and
written with `STORE(v)`: float32 at fp32/tf32, 16-bit patterns converted to and from float32 at
fp16/bf16 (`STORAGE`; round to nearest even, as PTX `cvt.rn` and NumPy do). Kernels compute in
float32 whatever the storage; the storage is the program's, given to `render`.

`OPENCL_RACE_CHECK` is an opt-in OpenCL rendering that finds a missing `BARRIER()`, which the
plain one hides (PoCL runs a work-group's items one after another between barriers, and adds
barriers of its own around loops that contain one): see `RACE_CHECK_HELPERS` and `shadow_shared`.
It also logs the shared-memory accesses of a kernel's first work-group, by source line, from which
`bank_conflicts` counts the passes each warp-wide access needs (the bank check)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The words that rework a thread's landed copies in shared memory, n neighbouring values at p read
# and written in one access each way: SCALE_TF32X{n} / SCALE_U16X{n}(p, gates) multiply float32 or
# 16-bit values by their gates (float32 or ACT at gates), each product rounded as the tensor cores
# take it (TF32) or as the mul would have stored it (16 bits); ROUND_TF32X{n}(p) rounds float32
# values as the tensor cores read them (TF32_OPERAND)
SCALES = (("TF32", 2), ("TF32", 4), ("U16", 2), ("U16", 4), ("U16", 8))
ROUNDS = (2, 4)
ROUNDED = {"TF32": "TF32_OPERAND", "U16": "STORE"}  # the word that rounds a reworked value, per kind
WORDS = ("KERNEL", "GLOBAL", "SHARED", "RESTRICT", "BARRIER()", "BLOCK_X", "BLOCK_Y", "BLOCK_Z", "THREAD_X",
         "UNROLL", "NO_UNROLL", "ALIGNED16", "INLINE", "NEG_INF",
         "EXPF(x)", "TANHF(x)", "ERFF(x)", "SQRTF(x)", "TF32(x)", "TF32_OPERAND(x)", "MMA_TF32(d, a, b)",
         "MMA_SCRATCH(warps)",
         "CP_ASYNC_STATE(n)", "CP_ASYNC4(dst, src, pred)", "CP_ASYNC8(dst, src, pred)", "CP_ASYNC16(dst, src, pred)",
         "CP_ASYNC_COMMIT()", "CP_ASYNC_WAIT(n)", "CP_ASYNC_STATE_HALF(n)", "CP_ASYNC4_HALF(dst, src, pred)",
         "CP_ASYNC8_HALF(dst, src, pred)", "CP_ASYNC16_HALF(dst, src, pred)",
         "HALF", "AS_FLOAT(u)", "AS_UINT(f)", "MMA_F16(d, a, b)", "MMA_BF16(d, a, b)",
         "LDMATRIX_X4(r, base, offset)", "LDMATRIX_X4_TRANS(r, base, offset)", "LDMATRIX_X2_TRANS(r, base, offset)",
         "LDMATRIX_X4_F32(r, base, offset)", "SHFL_XOR(v, lanes)", "WARP_SCRATCH(warps)", "THREADFENCE()",
         "ATOMIC_INC(p)", "LOAD_COHERENT(x)",
         "DYNAMIC_SHARED(bytes)", "SHARED_VIEW(type, name, count, inner, offset)", "STORE_F32X2(p, a, b)",
         "STORE_U16X2(p, a, b)", *(f"SCALE_{kind}X{n}(p, gates)" for kind, n in SCALES),
         *(f"ROUND_TF32X{n}(p)" for n in ROUNDS))
# spelled per storage precision (`STORAGE`), not per dialect; STORE_PAIR(p, a, b): float32 values a
# and b stored at p[0] and p[1] in one access (p: a multiple of two elements)
STORAGE_WORDS = ("ACT", "LOAD(x)", "STORE(v)", "STORE_PAIR(p, a, b)")

# max and min that return NaN when either side is NaN, as PyTorch's relu, clamp and max pooling do
# (C's fmaxf/fminf return the other operand, which would turn a NaN input into 0 or 6)
HELPERS = """INLINE float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }
INLINE float min_nan(float a, float b) { return (a < b || a != a) ? a : b; }
"""


# The 16-bit storage conversions. float -> fp16 rounds to nearest even: subnormals kept, from 65520 up
# infinity, NaN stays NaN; fp16 -> float is exact. bf16 is the high half of a float32, rounded to
# nearest even (a NaN's quiet bit is set first, so rounding never makes it infinity).
_BF16 = """INLINE float bf16_to_f32(HALF h) { return AS_FLOAT((unsigned)h << 16); }
INLINE HALF f32_to_bf16(float f) {
    const unsigned u = AS_UINT(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (HALF)((u >> 16) | 0x40u);
    return (HALF)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
"""
STORAGE_HELPERS = {
    "cuda": """INLINE float f16_to_f32(HALF h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
INLINE HALF f32_to_f16(float f) {
    HALF h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
""" + _BF16,
    "opencl": """INLINE float f16_to_f32(HALF h) {
    const uint sign = (uint)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return as_float(sign | as_uint((float)m * 5.9604644775390625e-8f));  /* subnormal: m * 2^-24 */
    if (e == 31) return as_float(sign | 0x7f800000u | (m << 13));
    return as_float(sign | ((e + 112u) << 23) | (m << 13));
}
INLINE HALF f32_to_f16(float f) {
    const uint u = as_uint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (HALF)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  /* NaN */
    if (a >= 0x477ff000u) return (HALF)(sign | 0x7c00u);  /* 65520 and up round to infinity */
    if (a < 0x38800000u) return (HALF)(sign | (uint)rint(as_float(a) * 16777216.0f));  /* below 2^-14: m * 2^-24 */
    const uint r = a - 0x38000000u;  /* the exponent rebiased; then round off 13 mantissa bits, to even */
    return (HALF)(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}
""" + _BF16,
}
STORAGE = {  # storage precision -> how ACT, LOAD, STORE and STORE_PAIR are spelled (HALF: the dialect's 16-bit type)
    "fp32": {"ACT": "float", "LOAD(x)": "(x)", "STORE(v)": "(v)", "STORE_PAIR(p, a, b)": "STORE_F32X2(p, a, b)"},
    "fp16": {"ACT": "HALF", "LOAD(x)": "f16_to_f32(x)", "STORE(v)": "f32_to_f16(v)",
             "STORE_PAIR(p, a, b)": "STORE_U16X2(p, f32_to_f16(a), f32_to_f16(b))"},
    "bf16": {"ACT": "HALF", "LOAD(x)": "bf16_to_f32(x)", "STORE(v)": "f32_to_bf16(v)",
             "STORE_PAIR(p, a, b)": "STORE_U16X2(p, f32_to_bf16(a), f32_to_bf16(b))"},
}
STORAGE["tf32"] = STORAGE["fp32"]


# TF32 (round to a 10-bit mantissa, to nearest with ties away from zero, as cvt.rna.tf32.f32 does),
# TF32_OPERAND (x plus half a TF32 unit in the last place where x is finite: the tensor cores, which
# drop the 13 low bits of an operand, read it so rounded; what ptxas makes of a cvt.rna feeding an
# mma, one instruction fewer than clearing the bits) and the warp-wide mma.sync.aligned.m16n8k8
# TF32 product, per dialect. Fragments (PTX ISA, "Matrix
# fragments for mma.m16n8k8"; g = lane / 4, t = lane % 4): a0 (row g, col t), a1 (g+8, t), a2 (g, t+4),
# a3 (g+8, t+4); b0 (row t, col g), b1 (t+4, g); d_i at row g + 8*(i/2), col 2t + i%2.
TENSOR_CORE_HELPERS = {
    "cuda": """INLINE float tf32_round(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}
INLINE float tf32_operand(float x) {
    return fabsf(x) < __int_as_float(0x7f800000) ? __uint_as_float(__float_as_uint(x) + 0x1000u) : x;
}
INLINE void mma_tf32(float* d, const float* a, const float* b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
                   "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
}
/* m16n8k16 with 16-bit operands, two per 32-bit register (the lower-indexed one in the low half):
   a0 (row g, cols 2t, 2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); b0 (rows 2t, 2t+1, col g),
   b1 (rows 2t+8, 2t+9); d as in m16n8k8 */
INLINE void mma_f16(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
INLINE void mma_bf16(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
/* 8x8 16-bit matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8 (16
   contiguous bytes); register j of lane (g, t) gets row g, columns 2t, 2t+1 of matrix j, or with
   .trans column g of rows 2t, 2t+1 */
INLINE void ldmatrix_x4(unsigned* r, const HALF* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(p)));
}
INLINE void ldmatrix_x4_trans(unsigned* r, const HALF* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"((unsigned)__cvta_generic_to_shared(p)));
}
INLINE void ldmatrix_x2_trans(unsigned* r, const HALF* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"((unsigned)__cvta_generic_to_shared(p)));
}
/* the same rows read as 8x4 float32 matrices: register j of lane (g, t) gets row g, column t of
   matrix j (the two 16-bit halves 2t, 2t+1), the TF32 A fragment of rows +0/+8, columns +0/+4 */
INLINE void ldmatrix_x4_f32(float* r, const float* p) {
    unsigned u[4];
    ldmatrix_x4(u, (const HALF*)p);
    for (int j = 0; j < 4; ++j) r[j] = __uint_as_float(u[j]);
}
/* 4, 8 or 16 (aligned) bytes global -> shared, bypassing registers (16: L1 too); pred false: zero-fill,
   the source is not read */
INLINE void cp_async4(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(pred ? 4 : 0));
}
INLINE void cp_async8(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(pred ? 8 : 0));
}
INLINE void cp_async16(void* dst, const void* src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(pred ? 16 : 0));
}
""",
    # Each lane publishes its fragment registers to its warp's slice of local memory; after a barrier
    # it sums exactly its own four accumulator elements in the PTX layout. The hardware reads only the
    # TF32 bits of an operand (it truncates one that was never rounded), and so does the emulation.
    "opencl": """INLINE float tf32_round(float x) {
    const uint u = as_uint(x);
    return (u & 0x7f800000u) == 0x7f800000u ? x : as_float((u + 0x1000u) & 0xffffe000u);
}
INLINE float tf32_operand(float x) {
    const uint u = as_uint(x);
    return (u & 0x7f800000u) == 0x7f800000u ? x : as_float(u + 0x1000u);
}
INLINE float tf32_bits(float x) { return as_float(as_uint(x) & 0xffffe000u); }
INLINE float half_value(uint bits, int bf16) { return bf16 ? bf16_to_f32((HALF)bits) : f16_to_f32((HALF)bits); }
/* kind 0: m16n8k8 on TF32 operands, one per register; kind 1 (fp16) and 2 (bf16): m16n8k16 on 16-bit
   operands, two per register (see the CUDA helpers for the fragment layouts). Element kk of a row
   of A is in register row / 8 + 2 * (kk / (4 * per)) of lane (row % 8) * 4 + kk % (4 * per) / per,
   in its part kk % per (the low 16 bits first); element kk of a column of B in register kk / (4 * per) of lane col * 4 + ...
   The products of two 16-bit values are exact in float32. */
INLINE float mma_operand(uint word, int part, int kind) {
    return kind == 0 ? tf32_bits(as_float(word)) : half_value((word >> (16 * part)) & 0xffffu, kind == 2);
}
INLINE void mma_emulated(float* d, const uint* a, const uint* b, __local uint* sa, __local uint* sb, int kind) {
    const int lane = get_local_id(0) % 32;
    __local uint* wa = sa + (get_local_id(0) / 32) * 128;  /* this warp's 32 lanes x a0..a3 */
    __local uint* wb = sb + (get_local_id(0) / 32) * 64;   /* and x b0, b1 */
    for (int i = 0; i < 4; ++i) wa[lane * 4 + i] = a[i];
    wb[lane * 2] = b[0];
    wb[lane * 2 + 1] = b[1];
    barrier(CLK_LOCAL_MEM_FENCE);
    const int g = lane / 4, t = lane % 4, per = kind == 0 ? 1 : 2;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float s = 0.0f;
        for (int kk = 0; kk < 8 * per; ++kk) {
            const int at = kk % (4 * per) / per, reg = kk / (4 * per), part = kk % per;
            s += mma_operand(wa[((row % 8) * 4 + at) * 4 + row / 8 + 2 * reg], part, kind)
                 * mma_operand(wb[(col * 4 + at) * 2 + reg], part, kind);
        }
        d[i] += s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);  /* before the next product overwrites the published fragments */
}
/* ldmatrix of `count` 8x8 matrices: each lane publishes its row's offset from `base`, then takes,
   from matrix j, columns 2t, 2t+1 of the row lane 8j + g points at; or (`trans`) column g of the
   rows lanes 8j + 2t and 8j + 2t + 1 point at */
INLINE void ldmatrix(uint* r, int count, bool trans, __local const HALF* base, int offset, __local int* rows) {
    const int lane = get_local_id(0) % 32;
    __local int* wr = rows + (get_local_id(0) / 32) * 32;
    wr[lane] = offset;
    barrier(CLK_LOCAL_MEM_FENCE);
    const int g = lane / 4, t = lane % 4;
    for (int j = 0; j < count; ++j) {
        const int lo = trans ? wr[8 * j + 2 * t] + g : wr[8 * j + g] + 2 * t;
        const int hi = trans ? wr[8 * j + 2 * t + 1] + g : lo + 1;
        r[j] = (uint)base[lo] | ((uint)base[hi] << 16);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}
/* The async copies in flight, per work-item (`CP_ASYNC_STATE`): destination, value, group. A copy
   beyond the queue's capacity (a kernel that waits too little) never lands: its poison stays. A
   wait lands (`land`, on entry i_) those whose group is older than `done_below`. */
#define CPQ_PUSH(d, v) if (cpq_count < cpq_capacity) { cpq_dst[cpq_count] = (d); cpq_value[cpq_count] = (v); \
                                                       cpq_group[cpq_count++] = cpq_groups; }
#define CPQ_LAND(done_below, land) do { int kept_ = 0; for (int i_ = 0; i_ < cpq_count; ++i_) { \
        if (cpq_group[i_] < (done_below)) { land; } else { cpq_dst[kept_] = cpq_dst[i_]; \
        cpq_value[kept_] = cpq_value[i_]; cpq_group[kept_++] = cpq_group[i_]; } } cpq_count = kept_; } while (0)
""",
}


# Warp shuffles (`SHFL_XOR`, with `WARP_SCRATCH` declared): CUDA's are built in; OpenCL's go through
# local memory, one slot per lane, between two barriers (so every work-item of the group calls it)
WARP_HELPERS = {"cuda": "", "opencl": """/* the float lane ^ `lanes` of this warp holds */
INLINE float shfl_xor(float v, int lanes, __local uint* scratch) {
    const int lane = get_local_id(0) % 32;
    __local uint* w = scratch + (get_local_id(0) / 32) * 32;
    w[lane] = as_uint(v);
    barrier(CLK_LOCAL_MEM_FENCE);
    const float other = as_float(w[lane ^ lanes]);
    barrier(CLK_LOCAL_MEM_FENCE);
    return other;
}
"""}


# The race check (OpenCL only): every SHARED float or HALF gets a shadow int2, x = its last write, y = its last
# read, each as a mark `epoch * 2048 + thread` (-1: none; thread RC_MANY: several readers), where a
# work-item's epoch is the number of BARRIER()s it has passed. An access conflicts when another
# thread wrote (or, for a write, read) the element in the same epoch: nothing separated them. Marks
# compare the same way whatever order PoCL runs the work-items in, so both orders of a racing pair
# are found. A racing read returns NaN and a racing write stores NaN (the outputs show it), and each
# conflict counts in the kernel's extra `rc_races` argument (the backend reports it). A thread's own
# write then read needs no barrier and passes; so do reads by many threads in one epoch.
# Marks are plain loads and stores: where PoCL vectorises its loop over work-items, two readers of one
# element may both leave their own mark, so a write racing with several readers can go uncounted
# when it comes from the one whose mark stayed (there are always others in a tile). Threads < 1024.
# Each thread of a kernel's first work-group also logs its first RACE_LOG shared-memory accesses
# (source line, bytes, read or write, address) in `rc_log`, for the bank check (`bank_conflicts`).
RACE_LOG = 512  # the shared-memory accesses each thread of a kernel's first work-group logs (bank check)
RACE_CHECK_HELPERS = f"#define RC_LOG {RACE_LOG}\n" + """#define RC_MANY 1024
/* a shared float or 16-bit value, its shadow, and where the shared memory it is carved from begins */
typedef struct { __local float* at; __local int2* mark; __local uchar* shared; } rc_ref;
typedef struct { __local HALF* at; __local int2* mark; __local uchar* shared; } rc_ref_h;
INLINE rc_ref rc_at(__local float* at, __local int2* mark, __local uchar* shared) {
    rc_ref r; r.at = at; r.mark = mark; r.shared = shared; return r;
}
INLINE rc_ref_h rc_at_h(__local HALF* at, __local int2* mark, __local uchar* shared) {
    rc_ref_h r; r.at = at; r.mark = mark; r.shared = shared; return r;
}
INLINE rc_ref rc_step(rc_ref r, int q) { return rc_at(r.at + q, r.mark + q, r.shared); }
INLINE rc_ref_h rc_step_h(rc_ref_h r, int q) { return rc_at_h(r.at + q, r.mark + q, r.shared); }
INLINE int rc_me(int epoch) {
    return epoch * 2048 + (int)(get_local_id(0) + get_local_size(0) * (get_local_id(1) + get_local_size(1) * get_local_id(2)));
}
/* the bank check's log: a thread of the first work-group notes its access of `bytes` bytes at
   `address` (from the start of shared memory) made by source line `line`, a write or a read */
INLINE void rc_log_access(__global int* log, int* count, int line, int bytes, bool write, int address) {
    if (get_group_id(0) || get_group_id(1) || get_group_id(2) || *count >= RC_LOG) return;
    const int at = 2 * (rc_me(0) * RC_LOG + (*count)++);
    log[at] = line * 64 + bytes * 2 + write;
    log[at + 1] = address;
}
/* an access of `bytes` at the shared `rc_ref` or `rc_ref_h` r (an async copy's destination, logged as
   it is issued), from the kernel's line */
#define RC_LOG_ACCESS(r, bytes, write) \
    rc_log_access(rc_log, &rc_count, __LINE__, bytes, write, (int)((__local uchar*)(r).at - (r).shared))
INLINE rc_ref rc_seen(rc_ref r, int line, bool write, __global int* log, int* count) {
    rc_log_access(log, count, line, 4, write, (int)((__local uchar*)r.at - r.shared));
    return r;
}
INLINE rc_ref_h rc_seen_h(rc_ref_h r, int line, bool write, __global int* log, int* count) {
    rc_log_access(log, count, line, 2, write, (int)((__local uchar*)r.at - r.shared));
    return r;
}
/* marks a read of the element whose shadow is `mark`; true when it races */
INLINE bool rc_mark_read(__local int2* mark, int epoch, __global int* races) {
    const int me = rc_me(epoch), now = epoch * 2048;
    const int2 m = *mark;
    const bool race = m.x >= now && m.x != me;  /* another thread wrote it since the last barrier */
    mark->y = m.y < now || m.y == me ? me : now + RC_MANY;
    if (race) atomic_inc(races);
    return race;
}
INLINE bool rc_mark_write(__local int2* mark, int epoch, __global int* races) {
    const int me = rc_me(epoch), now = epoch * 2048;
    const int2 m = *mark;
    const bool race = (m.x >= now && m.x != me) || (m.y >= now && m.y != me);  /* written or read by another */
    mark->x = me;
    if (race) atomic_inc(races);
    return race;
}
INLINE float rc_read(rc_ref r, int epoch, __global int* races) {
    return rc_mark_read(r.mark, epoch, races) ? NAN : *r.at;
}
INLINE void rc_write(rc_ref r, float v, int epoch, __global int* races) {
    *r.at = rc_mark_write(r.mark, epoch, races) ? NAN : v;
}
/* 16-bit values race to 0x7fff, a NaN in fp16 and in bf16 */
INLINE HALF rc_read_h(rc_ref_h r, int epoch, __global int* races) {
    return rc_mark_read(r.mark, epoch, races) ? (HALF)0x7fffu : *r.at;
}
INLINE void rc_write_h(rc_ref_h r, HALF v, int epoch, __global int* races) {
    *r.at = rc_mark_write(r.mark, epoch, races) ? (HALF)0x7fffu : v;
}
INLINE void rc_clear(__local int2* mark, int count) {  /* the shadow of a fresh work-group: no access yet */
    const int lid = rc_me(0), size = get_local_size(0) * get_local_size(1) * get_local_size(2);
    for (int i = lid; i < count; i += size) mark[i] = (int2)(-1, -1);
}
/* a checked ldmatrix's rows: the lanes giving one (`row`, from `shared`) log it, and every lane
   publishes its row's `offset` to its warp's slice of `rows`, which it returns, read after the barrier */
INLINE __local int* ldmatrix_rc_rows(__local uchar* row, __local uchar* shared, int count, int offset,
                                     __local int* rows, int line, __global int* log, int* log_count) {
    const int lane = get_local_id(0) % 32;
    if (lane < 8 * count) rc_log_access(log, log_count, line, 16, false, (int)(row - shared));
    __local int* wr = rows + (get_local_id(0) / 32) * 32;
    wr[lane] = offset;
    barrier(CLK_LOCAL_MEM_FENCE);
    return wr;
}
/* ldmatrix of TENSOR_CORE_HELPERS reading checked 16-bit rows */
INLINE void ldmatrix_rc(uint* r, int count, bool trans, rc_ref_h base, int offset, __local int* rows, int epoch,
                        __global int* races, int line, __global int* log, int* log_count) {
    __local int* wr = ldmatrix_rc_rows((__local uchar*)(base.at + offset), base.shared, count, offset, rows, line,
                                       log, log_count);
    const int lane = get_local_id(0) % 32, g = lane / 4, t = lane % 4;
    for (int j = 0; j < count; ++j) {
        const int lo = trans ? wr[8 * j + 2 * t] + g : wr[8 * j + g] + 2 * t;
        const int hi = trans ? wr[8 * j + 2 * t + 1] + g : lo + 1;
        r[j] = (uint)rc_read_h(rc_step_h(base, lo), epoch, races)
               | ((uint)rc_read_h(rc_step_h(base, hi), epoch, races) << 16);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
}
/* ldmatrix_rc of 8x4 float32 matrices (LDMATRIX_X4_F32): register j gets row g, column t of matrix j */
INLINE void ldmatrix_rc_f32(float* r, int count, rc_ref base, int offset, __local int* rows, int epoch,
                            __global int* races, int line, __global int* log, int* log_count) {
    __local int* wr = ldmatrix_rc_rows((__local uchar*)(base.at + offset), base.shared, count, offset, rows, line,
                                       log, log_count);
    const int lane = get_local_id(0) % 32;
    for (int j = 0; j < count; ++j) r[j] = rc_read(rc_step(base, wr[8 * j + lane / 4] + lane % 4), epoch, races);
    barrier(CLK_LOCAL_MEM_FENCE);
}
/* an async copy lands as a checked write (the queue holds float32 or 16-bit destinations) */
__attribute__((overloadable)) INLINE void rc_land(rc_ref d, float v, int epoch, __global int* races) {
    rc_write(d, v, epoch, races);
}
__attribute__((overloadable)) INLINE void rc_land(rc_ref_h d, HALF v, int epoch, __global int* races) {
    rc_write_h(d, v, epoch, races);
}
"""


def race_checked(body: str) -> bool:
    """Whether the race-check rendering instruments this kernel (it then takes two more arguments:
    `GLOBAL int* rc_races`, a counter of the conflicts it found, and `GLOBAL int* rc_log`, the bank
    check's log of `RACE_LOG_INTS` ints per thread)."""
    return "SHARED" in body or "BARRIER()" in body  # SHARED, DYNAMIC_SHARED, SHARED_VIEW


RACE_LOG_INTS = 2 * RACE_LOG  # per thread: entries of (line * 64 + bytes * 2 + write, address)


def bank_conflicts(log, threads: int) -> dict[tuple[int, bool], int]:
    """The bank check, from a race-checked kernel's `rc_log` (`threads` x RACE_LOG_INTS ints, -1
    where nothing was logged): (source line, write) -> the most passes one of its warp-wide
    shared-memory accesses needs (1: free of bank conflicts). A lane's n-th access from a line
    meets the other lanes' n-th. The hardware serves a warp's accesses of w bytes in phases of
    128 / w lanes (an `ldmatrix` 8x8 matrix per phase: its 8 rows of 16 bytes), each of 32 banks of
    4-byte words; a bank serves one word per pass, to every lane that wants it."""
    warps: dict[tuple[int, int, int], dict[int, int]] = {}  # (key, warp, n) -> lane -> address
    for thread in range(threads):
        seen: dict[int, int] = {}
        for key, address in zip(*[iter(log[thread * RACE_LOG_INTS:(thread + 1) * RACE_LOG_INTS])] * 2):
            if key < 0:
                break
            seen[key] = seen.get(key, 0) + 1
            warps.setdefault((int(key), thread // 32, seen[key]), {})[thread % 32] = int(address)
    worst: dict[tuple[int, bool], int] = {}
    for (key, _, _), lanes in warps.items():
        width, site = key % 64 // 2, (key // 64, bool(key % 2))
        phase = 128 // max(width, 4)
        for first in range(0, 32, phase):
            words: dict[int, set] = {}  # bank -> the words it serves
            for lane in range(first, first + phase):
                if lane in lanes:
                    for word in range(lanes[lane] // 4, (lanes[lane] + width - 1) // 4 + 1):
                        words.setdefault(word % 32, set()).add(word)
            worst[site] = max(worst.get(site, 1), *(len(w) for w in words.values()), 1)
    return worst


# shared arrays, as declared (SHARED float A[2][16][72];) or carved from dynamic shared memory
# (SHARED_VIEW(float, A, 2, [16][72], offset);): indent, element type, name, dims
_SHARED_DECL = re.compile(r"^([ \t]*)SHARED (float|HALF) (\w+)((?:\[[^\]]+\])+)[^;\n]*;[^\n]*\n", re.M)
_SHARED_VIEW = re.compile(r"^([ \t]*)SHARED_VIEW\((float|HALF), (\w+), (\w+), ((?:\[[^\]]+\])+), [^;\n]*\);[^\n]*\n",
                          re.M)


def _shared_arrays(kernel: str) -> list[tuple[str, str, str, str, int, str]]:
    """The shared arrays a kernel declares, in order: (indent, element type, name, dims, end of the
    line, the start of the shared memory it lies in: the dynamic buffer of a view, else itself)."""
    found = [(m.start(), (m[1], m[2], m[3], m[4], m.end(), m[3])) for m in _SHARED_DECL.finditer(kernel)]
    found += [(m.start(), (m[1], m[2], m[3], f"[{m[4]}]{m[5]}", m.end(), "dynamic_shared"))
              for m in _SHARED_VIEW.finditer(kernel)]
    return [array for _, array in sorted(found)]


def shadow_shared(body: str) -> str:
    """`body` (one or more kernels) with each kernel that uses shared memory instrumented for the
    race check: the `rc_races` and `rc_log` arguments, a shadow array per SHARED float or HALF array
    (cleared, then a barrier that is no BARRIER() word), the epoch counter, the count of logged
    accesses, and every access to a shared array through `rc_read` / `rc_write` (`_h` for HALF),
    logged by `rc_seen` with its line in `body` (`&A[i]`, as CP_ASYNC4 and LDMATRIX take it,
    becomes an `rc_ref`, which those log): a `#line` after the added lines keeps `__LINE__` so."""
    kernels, out, line = re.split(r"(?=^KERNEL void )", body, flags=re.M), [], 1
    for kernel in kernels:
        out.append(_shadow_kernel(kernel, line) if race_checked(kernel) else kernel)
        line += kernel.count("\n")
    return "".join(out)


def _shadow_kernel(kernel: str, first_line: int) -> str:
    """`kernel`, which begins on line `first_line` of the body, instrumented (`shadow_shared`)."""
    head = re.match(r"KERNEL void \w+\(", kernel)
    assert head, "a kernel starts with its signature"
    close = _matching(kernel, head.end() - 1)
    kernel = kernel[:close] + ", GLOBAL int* rc_races, GLOBAL int* rc_log" + kernel[close:]
    decls = _shared_arrays(kernel)
    arrays = {name: (kind, shared) for _, kind, name, _, _, shared in decls}
    pad = decls[-1][0] if decls else "    "
    setup = [f"{pad}SHARED int2 {name}_rc{dims};  /* race check: the last write and read of each {name} */\n"
             for _, _, name, dims, _, _ in decls]
    setup.append(f"{pad}int rc_epoch = 0;  /* race check: BARRIER()s passed */\n")
    setup.append(f"{pad}int rc_count = 0;  /* bank check: the accesses logged */\n")
    setup += [f"{pad}rc_clear((__local int2*){n}_rc, sizeof({n}_rc) / sizeof(int2));\n" for n in arrays]
    if arrays:
        setup.append(f"{pad}barrier(CLK_LOCAL_MEM_FENCE);\n")
    at = decls[-1][4] if decls else kernel.index("\n", kernel.index("{", close)) + 1
    setup.append(f"#line {first_line + kernel[:at].count(chr(10))}\n")  # the lines above were not the body's
    return kernel[:at] + "".join(setup) + _instrument(kernel[at:], arrays)


def _matching(code: str, open_at: int) -> int:
    """The index of the bracket closing the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(code)):
        depth += code[i] in "([{"
        depth -= code[i] in ")]}"
        if depth == 0:
            return i
    raise ValueError(f"unbalanced brackets after {code[open_at:open_at + 40]!r}")


def _instrument(code: str, arrays: dict[str, tuple[str, str]]) -> str:
    """Accesses `A[i][j]` to the shared arrays in `code` (name -> element type, float or HALF, and
    the start of the shared memory it lies in) through the race check's helpers."""
    if not arrays:
        return code
    access = re.compile(r"(?<![\w.])(" + "|".join(arrays) + r")\[")
    out, pos = [], 0
    while m := access.search(code, pos):
        start, end = m.start(), m.end() - 1
        while end < len(code) and code[end] == "[":  # A[i][j]...: all the subscripts
            end = _matching(code, end) + 1
        index = code[m.end() - 1:end]
        assert not access.search(index), f"a shared array indexed by another: {code[start:end]}"
        kind, shared = arrays[m[1]]
        h = "_h" if kind == "HALF" else ""
        ref = f"rc_at{h}(&{m[1]}{index}, &{m[1]}_rc{index}, (__local uchar*){shared})"
        before, after = code[pos:start].rstrip(), code[end:].lstrip()
        if before.endswith("&") and not before.endswith("&&"):  # &A[i]: an async copy's destination, a row base
            out.append(before[:-1] + ref)
        elif after.startswith("=") and not after.startswith("=="):  # A[i] = value;
            stop = code.index(";", end)
            value = _instrument(code[code.index("=", end) + 1:stop], arrays).strip()
            logged = f"rc_seen{h}({ref}, __LINE__, true, rc_log, &rc_count)"
            out.append(f"{code[pos:start]}rc_write{h}({logged}, {value}, rc_epoch, rc_races)")
            end = stop
        else:
            assert not re.match(r"(\+\+|--|[-+*/%&|^]=|<<=|>>=)", after), \
                f"an update of a shared element: {code[start:end + 4]}"
            out.append(f"{code[pos:start]}rc_read{h}(rc_seen{h}({ref}, __LINE__, false, rc_log, &rc_count), "
                       "rc_epoch, rc_races)")
        pos = end
    return "".join(out) + code[pos:]


@dataclass(frozen=True)
class Dialect:
    name: str
    suffix: str           # file suffix of a rendered kernel
    spelling: dict        # word -> how this dialect writes it
    race_check: bool = False  # OpenCL only: instrument shared memory (RACE_CHECK_HELPERS)

    def prelude(self, tensor_cores: bool = False, storage: str = "fp32", shuffles: bool = False) -> str:
        lines = [f"/* cnngraph kernel, {self.name} dialect{', race check' if self.race_check else ''}, "
                 f"{storage} storage */"]
        spelling = {**self.spelling, **STORAGE[storage]}
        for word in (*WORDS, *STORAGE_WORDS):
            lines.append(f"#define {word} {spelling[word]}".rstrip())
        conversions = storage in ("fp16", "bf16") or tensor_cores  # the 16-bit mma emulation converts too
        return ("\n".join(lines) + "\n" + HELPERS + (STORAGE_HELPERS[self.name] if conversions else "")
                + (TENSOR_CORE_HELPERS[self.name] if tensor_cores else "")
                + (WARP_HELPERS[self.name] if shuffles else "") + (RACE_CHECK_HELPERS if self.race_check else ""))

    def render(self, body: str, storage: str = "fp32") -> str:
        """The kernels of `body` in this dialect, their tensors stored at precision `storage`; the
        tensor-core helpers only where a kernel uses them (their PTX needs sm_80, and a module for
        an older card must still compile)."""
        if self.race_check:
            body = shadow_shared(body)
        return (self.prelude(tensor_cores="TF32(" in body or "MMA_" in body, storage=storage,
                             shuffles="SHFL_XOR(" in body) + "\n" + body)


def _cuda_scale(kind: str, n: int, gated: bool = True) -> str:
    """CUDA: `SCALE_{kind}X{n}` (`SCALES`), or without gates `ROUND_TF32X{n}` (`ROUNDS`), through
    one 4-, 8- or 16-byte vector each way (16-bit values in pairs per 32-bit word)."""
    if kind == "TF32":
        vector = f"float{n}"
        gate = " * LOAD((gates)[{}])" if gated else ""
        scale = " ".join(f"v_.{c} = tf32_operand(v_.{c}{gate.format(i)});" for i, c in enumerate("xyzw"[:n]))
    else:
        vector = {2: "unsigned", 4: "uint2", 8: "uint4"}[n]
        words = ["v_"] if n == 2 else [f"v_.{c}" for c in "xyzw"[:n // 2]]
        scale = " ".join(f"{w} = (unsigned)STORE(LOAD((HALF)({w} & 0xffffu)) * LOAD((gates)[{2 * i}])) "
                         f"| ((unsigned)STORE(LOAD((HALF)({w} >> 16)) * LOAD((gates)[{2 * i + 1}])) << 16);"
                         for i, w in enumerate(words))
    return f"do {{ {vector}* p_ = ({vector}*)(p); {vector} v_ = *p_; {scale} *p_ = v_; }} while (0)"


CUDA = Dialect("cuda", ".cu", {
    "KERNEL": 'extern "C" __global__', "GLOBAL": "", "SHARED": "__shared__", "RESTRICT": "__restrict__",
    "BARRIER()": "__syncthreads()", "BLOCK_X": "((int)blockIdx.x)", "BLOCK_Y": "((int)blockIdx.y)",
    "BLOCK_Z": "((int)blockIdx.z)", "UNROLL": '_Pragma("unroll")', "NO_UNROLL": '_Pragma("unroll 1")',
    "ALIGNED16": "__attribute__((aligned(16)))",
    "THREAD_X": "((int)threadIdx.x)", "EXPF(x)": "expf(x)", "TANHF(x)": "tanhf(x)", "ERFF(x)": "erff(x)",
    "SQRTF(x)": "sqrtf(x)", "INLINE": "__device__ __forceinline__", "NEG_INF": "(-__int_as_float(0x7f800000))",
    "TF32(x)": "tf32_round(x)", "TF32_OPERAND(x)": "tf32_operand(x)", "MMA_TF32(d, a, b)": "mma_tf32(d, a, b)",
    "MMA_SCRATCH(warps)": "",
    "CP_ASYNC_STATE(n)": "", "CP_ASYNC_STATE_HALF(n)": "",
    **{f"CP_ASYNC{n}{half}(dst, src, pred)": f"cp_async{n}(dst, src, pred)"
       for n in (4, 8, 16) for half in ("", "_HALF")},
    "HALF": "unsigned short", "AS_FLOAT(u)": "__uint_as_float(u)", "AS_UINT(f)": "__float_as_uint(f)",
    "MMA_F16(d, a, b)": "mma_f16(d, a, b)", "MMA_BF16(d, a, b)": "mma_bf16(d, a, b)",
    # split-K's last block: a device-wide fence, a counter, and loads that skip the (incoherent) L1
    "THREADFENCE()": "__threadfence()", "ATOMIC_INC(p)": "atomicAdd((p), 1)", "LOAD_COHERENT(x)": "__ldcg(&(x))",
    # a block's shared memory sized at launch (above 48 KB only so), carved into arrays: count x inner
    "DYNAMIC_SHARED(bytes)": "extern __shared__ __align__(16) unsigned char dynamic_shared[]",
    "SHARED_VIEW(type, name, count, inner, offset)": "type (*name)inner = (type (*)inner)(dynamic_shared + (offset))",
    "LDMATRIX_X4(r, base, offset)": "ldmatrix_x4(r, (base) + (offset))",
    "LDMATRIX_X4_TRANS(r, base, offset)": "ldmatrix_x4_trans(r, (base) + (offset))",
    "LDMATRIX_X2_TRANS(r, base, offset)": "ldmatrix_x2_trans(r, (base) + (offset))",
    "SHFL_XOR(v, lanes)": "__shfl_xor_sync(0xffffffffu, (v), (lanes))", "WARP_SCRATCH(warps)": "",
    "CP_ASYNC_COMMIT()": 'asm volatile("cp.async.commit_group;")',
    "CP_ASYNC_WAIT(n)": 'asm volatile("cp.async.wait_group %0;" :: "n"(n))',
    # two neighbouring stored values, one 8- or 4-byte store (`STORE_PAIR`)
    "STORE_F32X2(p, a, b)": "(*(float2*)(p) = make_float2((a), (b)))",
    "STORE_U16X2(p, a, b)": "(*(unsigned*)(p) = (unsigned)(a) | ((unsigned)(b) << 16))",
    **{f"SCALE_{kind}X{n}(p, gates)": _cuda_scale(kind, n) for kind, n in SCALES},
    **{f"ROUND_TF32X{n}(p)": _cuda_scale("TF32", n, gated=False) for n in ROUNDS},
    "LDMATRIX_X4_F32(r, base, offset)": "ldmatrix_x4_f32(r, (base) + (offset))",
})

OPENCL = Dialect("opencl", ".cl", {
    "KERNEL": "__kernel", "GLOBAL": "__global", "SHARED": "__local", "RESTRICT": "restrict",
    "BARRIER()": "barrier(CLK_LOCAL_MEM_FENCE)", "BLOCK_X": "((int)get_group_id(0))",
    "BLOCK_Y": "((int)get_group_id(1))", "BLOCK_Z": "((int)get_group_id(2))",
    "UNROLL": '_Pragma("unroll")', "NO_UNROLL": '_Pragma("unroll 1")', "ALIGNED16": "__attribute__((aligned(16)))",
    "THREAD_X": "((int)get_local_id(0))", "EXPF(x)": "exp(x)",
    "TANHF(x)": "tanh(x)", "ERFF(x)": "erf(x)", "SQRTF(x)": "sqrt(x)", "INLINE": "static inline",
    "HALF": "ushort", "AS_FLOAT(u)": "as_float(u)", "AS_UINT(f)": "as_uint(f)",
    "MMA_F16(d, a, b)": "mma_emulated(d, a, b, mma_a, mma_b, 1)", "MMA_BF16(d, a, b)": "mma_emulated(d, a, b, mma_a, mma_b, 2)",
    "THREADFENCE()": "mem_fence(CLK_GLOBAL_MEM_FENCE)", "ATOMIC_INC(p)": "atomic_inc(p)", "LOAD_COHERENT(x)": "(x)",
    # OpenCL sizes local memory in the kernel: the same carving, of a buffer the size the launch gives CUDA
    "DYNAMIC_SHARED(bytes)": "__local uchar dynamic_shared[bytes] __attribute__((aligned(16)))",
    "SHARED_VIEW(type, name, count, inner, offset)": "__local type (*name)inner = (__local type (*)inner)(dynamic_shared + (offset))",
    "LDMATRIX_X4(r, base, offset)": "ldmatrix(r, 4, false, base, offset, ldmatrix_rows)",
    "LDMATRIX_X4_TRANS(r, base, offset)": "ldmatrix(r, 4, true, base, offset, ldmatrix_rows)",
    "LDMATRIX_X2_TRANS(r, base, offset)": "ldmatrix(r, 2, true, base, offset, ldmatrix_rows)",
    "SHFL_XOR(v, lanes)": "shfl_xor(v, lanes, shfl_scratch)",
    "WARP_SCRATCH(warps)": "__local uint shfl_scratch[(warps) * 32]",
    "NEG_INF": "(-INFINITY)", "TF32(x)": "tf32_round(x)", "TF32_OPERAND(x)": "tf32_operand(x)",
    "MMA_TF32(d, a, b)": "mma_emulated(d, (const uint*)(a), (const uint*)(b), mma_a, mma_b, 0)",
    "MMA_SCRATCH(warps)": "__local uint mma_a[(warps) * 128]; __local uint mma_b[(warps) * 64]; "
                          "__local int ldmatrix_rows[(warps) * 32]",
    "CP_ASYNC_STATE(n)": "__local float* cpq_dst[n]; float cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                         "int cpq_groups = 0; const int cpq_capacity = n",
    "CP_ASYNC4(dst, src, pred)": "do { const bool p_ = (pred); const float v_ = p_ ? *(src) : 0.0f; "
                                 "*(dst) = NAN; CPQ_PUSH(dst, v_) } while (0)",
    # two or four 4-byte copies in the same group (the hardware may land their bytes in any order)
    **{f"CP_ASYNC{4 * n}(dst, src, pred)": f"do {{ for (int q_ = 0; q_ < {n}; ++q_) "
                                           f"CP_ASYNC4((dst) + q_, (src) + q_, pred); }} while (0)" for n in (2, 4)},
    # two, four or eight 16-bit copies; 0x7fff is a NaN in fp16 and in bf16
    "CP_ASYNC_STATE_HALF(n)": "__local HALF* cpq_dst[n]; HALF cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                              "int cpq_groups = 0; const int cpq_capacity = n",
    **{f"CP_ASYNC{2 * n}_HALF(dst, src, pred)": f"do {{ const bool p_ = (pred); for (int q_ = 0; q_ < {n}; ++q_) {{ "
                                                f"const HALF v_ = p_ ? (src)[q_] : (HALF)0; (dst)[q_] = (HALF)0x7fff; "
                                                f"CPQ_PUSH((dst) + q_, v_) }} }} while (0)" for n in (2, 4, 8)},
    "CP_ASYNC_COMMIT()": "++cpq_groups",
    "CP_ASYNC_WAIT(n)": "CPQ_LAND(cpq_groups - (n), *cpq_dst[i_] = cpq_value[i_])",
    "STORE_F32X2(p, a, b)": "vstore2((float2)((a), (b)), 0, (p))",
    "STORE_U16X2(p, a, b)": "vstore2((ushort2)((a), (b)), 0, (p))",
    **{f"SCALE_{kind}X{n}(p, gates)": f"do {{ for (int q_ = 0; q_ < {n}; ++q_) "
                                        f"(p)[q_] = {ROUNDED[kind]}(LOAD((p)[q_]) * LOAD((gates)[q_])); }} while (0)"
       for kind, n in SCALES},
    **{f"ROUND_TF32X{n}(p)": f"do {{ for (int q_ = 0; q_ < {n}; ++q_) (p)[q_] = TF32_OPERAND((p)[q_]); }} while (0)"
       for n in ROUNDS},
    # the 16-bit emulation reads a float32 column as its two halves
    "LDMATRIX_X4_F32(r, base, offset)": "ldmatrix((uint*)(r), 4, false, (__local const HALF*)(base), 2 * (offset), "
                                        "ldmatrix_rows)",
})

def _race_checked_scale(kind: str, n: int, gated: bool = True) -> str:
    """The race check's `SCALE_{kind}X{n}` (or `ROUND_TF32X{n}`): one access of n values each way,
    logged so; each value checked."""
    h, size = ("_h", 2) if kind == "U16" else ("", 4)
    gate = " * LOAD((gates)[q_])" if gated else ""
    return (f"do {{ const rc_ref{h} p_ = (p); RC_LOG_ACCESS(p_, {size * n}, false); "
            f"RC_LOG_ACCESS(p_, {size * n}, true); for (int q_ = 0; q_ < {n}; ++q_) {{ "
            f"const rc_ref{h} e_ = rc_step{h}(p_, q_); rc_write{h}(e_, {ROUNDED[kind]}(LOAD("
            f"rc_read{h}(e_, rc_epoch, rc_races)){gate}), rc_epoch, rc_races); }} }} while (0)")


# OPENCL with the race check (see RACE_CHECK_HELPERS): a barrier also counts the epoch, async
# copies go through the checked stores, their destinations being `rc_ref`s, and ldmatrix through
# the checked 16-bit reads
OPENCL_RACE_CHECK = Dialect("opencl", ".cl", {
    **OPENCL.spelling,
    "BARRIER()": "do { barrier(CLK_LOCAL_MEM_FENCE); ++rc_epoch; } while (0)",
    "CP_ASYNC_STATE(n)": "rc_ref cpq_dst[n]; float cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                         "int cpq_groups = 0; const int cpq_capacity = n",
    **{f"CP_ASYNC{4 * n}(dst, src, pred)": f"do {{ const bool p_ = (pred); RC_LOG_ACCESS(dst, {4 * n}, true); "
                                           f"for (int q_ = 0; q_ < {n}; ++q_) {{ "
                                           f"const float v_ = p_ ? (src)[q_] : 0.0f; "
                                           f"const rc_ref d_ = rc_step((dst), q_); "
                                           f"rc_write(d_, NAN, rc_epoch, rc_races); "
                                           f"CPQ_PUSH(d_, v_) }} }} while (0)" for n in (1, 2, 4)},
    "CP_ASYNC_STATE_HALF(n)": "rc_ref_h cpq_dst[n]; HALF cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                              "int cpq_groups = 0; const int cpq_capacity = n",
    **{f"CP_ASYNC{2 * n}_HALF(dst, src, pred)": f"do {{ const bool p_ = (pred); RC_LOG_ACCESS(dst, {2 * n}, true); "
                                                f"for (int q_ = 0; q_ < {n}; ++q_) {{ "
                                                f"const HALF v_ = p_ ? (src)[q_] : (HALF)0; "
                                                f"const rc_ref_h d_ = rc_step_h((dst), q_); "
                                                f"rc_write_h(d_, (HALF)0x7fff, rc_epoch, rc_races); "
                                                f"CPQ_PUSH(d_, v_) }} }} while (0)" for n in (2, 4, 8)},
    "CP_ASYNC_WAIT(n)": "CPQ_LAND(cpq_groups - (n), rc_land(cpq_dst[i_], cpq_value[i_], rc_epoch, rc_races))",
    **{f"SCALE_{kind}X{n}(p, gates)": _race_checked_scale(kind, n) for kind, n in SCALES},
    **{f"ROUND_TF32X{n}(p)": _race_checked_scale("TF32", n, gated=False) for n in ROUNDS},
    "LDMATRIX_X4_F32(r, base, offset)": "ldmatrix_rc_f32(r, 4, base, offset, ldmatrix_rows, rc_epoch, rc_races, "
                                        "__LINE__, rc_log, &rc_count)",
    "LDMATRIX_X4(r, base, offset)": "ldmatrix_rc(r, 4, false, base, offset, ldmatrix_rows, rc_epoch, rc_races, "
                                    "__LINE__, rc_log, &rc_count)",
    "LDMATRIX_X4_TRANS(r, base, offset)": "ldmatrix_rc(r, 4, true, base, offset, ldmatrix_rows, rc_epoch, rc_races, "
                                          "__LINE__, rc_log, &rc_count)",
    "LDMATRIX_X2_TRANS(r, base, offset)": "ldmatrix_rc(r, 2, true, base, offset, ldmatrix_rows, rc_epoch, rc_races, "
                                          "__LINE__, rc_log, &rc_count)",
}, race_check=True)

DIALECTS = {d.name: d for d in (CUDA, OPENCL)}
