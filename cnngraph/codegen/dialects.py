"""The two C dialects kernels are rendered into. Templates are written once in a neutral C subset
using the words in `WORDS`; a dialect is just the table of how to spell each word, rendered as a
block of #defines at the top of every kernel (so each file compiles on its own).

Tensor-core words (`TF32`, `MMA_TF32`, `MMA_SCRATCH`) and asynchronous copies (`CP_ASYNC4`,
`CP_ASYNC_COMMIT`, `CP_ASYNC_WAIT`, `CP_ASYNC_STATE`) are spelled as inline PTX in CUDA and as an
exact emulation in OpenCL: `MMA_TF32` there computes, for each lane, exactly the accumulator
elements the PTX ISA assigns to it from the fragment registers the lanes hold, so a kernel's
fragment index math is what runs on PoCL; an async copy writes NaN into its destination when it is
issued and the data only at the `CP_ASYNC_WAIT` that completes its group, so a wait that is too
weak, or a copy never committed, shows up as NaN (see `TENSOR_CORE_HELPERS`).

`OPENCL_RACE_CHECK` is an opt-in OpenCL rendering that finds a missing `BARRIER()`, which the
plain one hides (PoCL runs a work-group's items one after another between barriers, and adds
barriers of its own around loops that contain one): see `RACE_CHECK_HELPERS` and `shadow_shared`."""

from __future__ import annotations

import re
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


# The race check (OpenCL only): every SHARED float gets a shadow int2, x = its last write, y = its last
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
RACE_CHECK_HELPERS = """#define RC_MANY 1024
typedef struct { __local float* at; __local int2* mark; } rc_ref;  /* a shared float and its shadow */
INLINE rc_ref rc_at(__local float* at, __local int2* mark) { rc_ref r; r.at = at; r.mark = mark; return r; }
INLINE int rc_me(int epoch) {
    return epoch * 2048 + (int)(get_local_id(0) + get_local_size(0) * (get_local_id(1) + get_local_size(1) * get_local_id(2)));
}
INLINE float rc_read(rc_ref r, int epoch, __global int* races) {
    const int me = rc_me(epoch), now = epoch * 2048;
    const int2 m = *r.mark;
    const bool race = m.x >= now && m.x != me;  /* another thread wrote it since the last barrier */
    r.mark->y = m.y < now || m.y == me ? me : now + RC_MANY;
    if (race) atomic_inc(races);
    return race ? NAN : *r.at;
}
INLINE void rc_write(rc_ref r, float v, int epoch, __global int* races) {
    const int me = rc_me(epoch), now = epoch * 2048;
    const int2 m = *r.mark;
    const bool race = (m.x >= now && m.x != me) || (m.y >= now && m.y != me);  /* written or read by another */
    r.mark->x = me;
    if (race) atomic_inc(races);
    *r.at = race ? NAN : v;
}
INLINE void rc_clear(__local int2* mark, int count) {  /* the shadow of a fresh work-group: no access yet */
    const int lid = rc_me(0), size = get_local_size(0) * get_local_size(1) * get_local_size(2);
    for (int i = lid; i < count; i += size) mark[i] = (int2)(-1, -1);
}
/* cp_async_wait of TENSOR_CORE_HELPERS on checked destinations: a copy lands as a write at the wait */
INLINE void cp_async_wait_rc(rc_ref* dst, float* value, int* group, int* count, int done_below, int epoch,
                             __global int* races) {
    int kept = 0;
    for (int i = 0; i < *count; ++i) {
        if (group[i] < done_below) {
            rc_write(dst[i], value[i], epoch, races);
        } else {
            dst[kept] = dst[i];
            value[kept] = value[i];
            group[kept] = group[i];
            ++kept;
        }
    }
    *count = kept;
}
"""


def race_checked(body: str) -> bool:
    """Whether the race-check rendering instruments this kernel (it then takes one more argument,
    `GLOBAL int* rc_races`, a counter of the conflicts it found)."""
    return "SHARED " in body or "BARRIER()" in body


_SHARED_DECL = re.compile(r"^([ \t]*)SHARED float (\w+)((?:\[[^\]]+\])+)[^;\n]*;[^\n]*\n", re.M)


def shadow_shared(body: str) -> str:
    """`body` (one or more kernels) with each kernel that uses shared memory instrumented for the
    race check: the `rc_races` argument, a shadow array per SHARED float array (cleared, then a
    barrier that is no BARRIER() word), the epoch counter, and every access to a shared array
    through `rc_read` / `rc_write` (`&A[i]`, as CP_ASYNC4 takes it, becomes an `rc_ref`)."""
    kernels = re.split(r"(?=^KERNEL void )", body, flags=re.M)
    return "".join(_shadow_kernel(k) if race_checked(k) else k for k in kernels)


def _shadow_kernel(kernel: str) -> str:
    head = re.match(r"KERNEL void \w+\(", kernel)
    assert head, "a kernel starts with its signature"
    close = _matching(kernel, head.end() - 1)
    kernel = kernel[:close] + ", GLOBAL int* rc_races" + kernel[close:]
    decls = list(_SHARED_DECL.finditer(kernel))
    names = [d[2] for d in decls]
    pad = decls[-1][1] if decls else "    "
    setup = [f"{pad}SHARED int2 {n}_rc{d[3]};  /* race check: the last write and read of each {n} */\n"
             for n, d in zip(names, decls)]
    setup.append(f"{pad}int rc_epoch = 0;  /* race check: BARRIER()s passed */\n")
    setup += [f"{pad}rc_clear((__local int2*){n}_rc, sizeof({n}_rc) / sizeof(int2));\n" for n in names]
    if names:
        setup.append(f"{pad}barrier(CLK_LOCAL_MEM_FENCE);\n")
    at = decls[-1].end() if decls else kernel.index("\n", kernel.index("{", close)) + 1
    return kernel[:at] + "".join(setup) + _instrument(kernel[at:], names)


def _matching(code: str, open_at: int) -> int:
    """The index of the bracket closing the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(code)):
        depth += code[i] in "([{"
        depth -= code[i] in ")]}"
        if depth == 0:
            return i
    raise ValueError(f"unbalanced brackets after {code[open_at:open_at + 40]!r}")


def _instrument(code: str, names: list[str]) -> str:
    """Accesses `A[i][j]` to the shared arrays `names` in `code` through the race check's helpers."""
    if not names:
        return code
    access = re.compile(r"(?<![\w.])(" + "|".join(names) + r")\[")
    out, pos = [], 0
    while m := access.search(code, pos):
        start, end = m.start(), m.end() - 1
        while end < len(code) and code[end] == "[":  # A[i][j]...: all the subscripts
            end = _matching(code, end) + 1
        index = code[m.end() - 1:end]
        assert not access.search(index), f"a shared array indexed by another: {code[start:end]}"
        ref = f"rc_at(&{m[1]}{index}, &{m[1]}_rc{index})"
        before, after = code[pos:start].rstrip(), code[end:].lstrip()
        if before.endswith("&") and not before.endswith("&&"):  # &A[i]: an async copy's destination
            out.append(before[:-1] + ref)
        elif after.startswith("=") and not after.startswith("=="):  # A[i] = value;
            stop = code.index(";", end)
            value = _instrument(code[code.index("=", end) + 1:stop], names).strip()
            out.append(f"{code[pos:start]}rc_write({ref}, {value}, rc_epoch, rc_races)")
            end = stop
        else:
            assert not re.match(r"(\+\+|--|[-+*/%&|^]=|<<=|>>=)", after), \
                f"an update of a shared element: {code[start:end + 4]}"
            out.append(f"{code[pos:start]}rc_read({ref}, rc_epoch, rc_races)")
        pos = end
    return "".join(out) + code[pos:]


@dataclass(frozen=True)
class Dialect:
    name: str
    suffix: str           # file suffix of a rendered kernel
    spelling: dict        # word -> how this dialect writes it
    race_check: bool = False  # OpenCL only: instrument shared memory (RACE_CHECK_HELPERS)

    def prelude(self, tensor_cores: bool = False) -> str:
        lines = [f"/* cnngraph kernel, {self.name} dialect{', race check' if self.race_check else ''} */"]
        for word in WORDS:
            lines.append(f"#define {word} {self.spelling[word]}".rstrip())
        return ("\n".join(lines) + "\n" + HELPERS + (TENSOR_CORE_HELPERS[self.name] if tensor_cores else "")
                + (RACE_CHECK_HELPERS if self.race_check else ""))

    def render(self, body: str) -> str:
        """The kernels of `body` in this dialect; the tensor-core helpers only where a kernel uses
        them (their PTX needs sm_80, and a module for an older card must still compile)."""
        if self.race_check:
            body = shadow_shared(body)
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

# OPENCL with the race check (see RACE_CHECK_HELPERS): a barrier also counts the epoch, and async
# copies go through the checked stores, their destinations being `rc_ref`s
OPENCL_RACE_CHECK = Dialect("opencl", ".cl", {
    **OPENCL.spelling,
    "BARRIER()": "do { barrier(CLK_LOCAL_MEM_FENCE); ++rc_epoch; } while (0)",
    "CP_ASYNC_STATE(n)": "rc_ref cpq_dst[n]; float cpq_value[n]; int cpq_group[n]; int cpq_count = 0; "
                         "int cpq_groups = 0; const int cpq_capacity = n",
    "CP_ASYNC4(dst, src, pred)": "do { const bool p_ = (pred); const float v_ = p_ ? *(src) : 0.0f; "
                                 "rc_write((dst), NAN, rc_epoch, rc_races); if (cpq_count < cpq_capacity) { "
                                 "cpq_dst[cpq_count] = (dst); cpq_value[cpq_count] = v_; "
                                 "cpq_group[cpq_count++] = cpq_groups; } } while (0)",
    "CP_ASYNC_WAIT(n)": "cp_async_wait_rc(cpq_dst, cpq_value, cpq_group, &cpq_count, cpq_groups - (n), rc_epoch, "
                        "rc_races)",
}, race_check=True)

DIALECTS = {d.name: d for d in (CUDA, OPENCL)}
