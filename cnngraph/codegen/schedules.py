"""How a conv/linear GEMM is tiled and split on the GPU: the register/shared-memory tiles, the
split-K heuristic, and the candidate schedules an autotuner may time (see autotune.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..geometry import cdiv


@dataclass(frozen=True)
class Tile:
    """Implicit-GEMM tiling: a block computes BM output pixels x BN output channels, reducing BK
    at a time through shared memory; each thread holds a TM x TN register block. Its rows are
    interleaved across threads (consecutive threads, consecutive pixels: coalesced stores), or
    `grouped` in runs of 4 (each run one 16-byte shared-memory read instead of four)."""
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    grouped: bool = False

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


MAX_SHARED_BYTES = 99 * 1024  # per block, opted in: sm_86/sm_89 allow 99 KB, sm_80 163 KB, sm_90 227 KB


@dataclass(frozen=True)
class MmaTile:
    """Tensor-core tiling: a block computes BM pixels x BN channels, reducing BK at a time through
    shared memory; its warps split the block tile into WM x WN warp tiles, each a grid of m16n8k8
    products (WM/16 x WN/8 accumulator fragments of 4 values per lane). `stages` slices are in
    flight in shared memory at once (cp.async): the TF32 kernel's float buffers take
    `shared_bytes()`, dynamic shared memory up to what every sm_80+ card allows a block (the
    16-bit kernel's half as much, when it copies an NHWC input so)."""
    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    stages: int = 3

    def a_shape(self, channels_last: bool = False, half: bool = False) -> tuple[int, int]:
        """One stage of a kernel's input buffer: [reduction][pixel], rows padded by 8 values, or for
        an NHWC input [pixel][reduction], rows padded by 4 floats or 8 16-bit values (`half`): all
        free of bank conflicts for the kernel's fragment reads."""
        if channels_last:
            return (self.bm, self.bk + (8 if half else 4))
        return (self.bk, self.bm + 8)

    def b_shape(self, channel_major: bool = False) -> tuple[int, int]:
        """One stage of its weight buffer: [reduction][channel], rows padded by 8 values, or
        `channel_major` (float32: the TF32 kernel of an NHWC input, whose B fragments `ldmatrix`
        reads as it reads A's) [channel][reduction], rows padded by 4."""
        return (self.bn, self.bk + 4) if channel_major else (self.bk, self.bn + 8)

    def shared_bytes(self, channels_last: bool = False, half: bool = False) -> int:
        """The dynamic shared memory of its cp.async kernels: `stages` of both buffers, of float32
        values or 16-bit ones (`half`)."""
        (ar, ac), (br, bc) = self.a_shape(channels_last, half), self.b_shape(channels_last and not half)
        return (2 if half else 4) * self.stages * (ar * ac + br * bc)

    @property
    def warps(self) -> int:
        return (self.bm // self.wm) * (self.bn // self.wn)

    @property
    def threads(self) -> int:
        return 32 * self.warps


MMA_TILES = {"mma_large": MmaTile(128, 128, 16, 64, 32, 3), "mma_wide": MmaTile(128, 64, 16, 64, 32, 3),
             "mma_small": MmaTile(64, 64, 16, 32, 32, 4), "mma_narrow": MmaTile(64, 32, 16, 32, 16, 4)}
MMA_DEEP_TILES = {  # autotuning candidates: other stage counts, and BK = 32 (all but two above 48 KB)
    "mma_large_4": MmaTile(128, 128, 16, 64, 32, 4), "mma_wide32": MmaTile(128, 64, 32, 64, 32, 3),
    "mma_wide_2": MmaTile(128, 64, 16, 64, 32, 2), "mma_small32": MmaTile(64, 64, 32, 32, 32, 3),
    "mma_narrow32": MmaTile(64, 32, 32, 32, 16, 3)}
assert all(t.shared_bytes(layout) <= MAX_SHARED_BYTES for t in (*MMA_TILES.values(), *MMA_DEEP_TILES.values())
           for layout in (False, True))

TILES = {"large": Tile(128, 128, 8, 8, 8), "wide": Tile(128, 64, 8, 8, 8), "small": Tile(64, 64, 8, 4, 8),
         "narrow": Tile(64, 32, 8, 4, 4)}
DEEP_TILES = {"large16": Tile(128, 128, 16, 8, 8), "wide16": Tile(128, 64, 16, 8, 8),  # autotuning candidates
              "large_grouped": Tile(128, 128, 8, 8, 8, grouped=True), "wide_grouped": Tile(128, 64, 8, 8, 8, grouped=True)}


@dataclass(frozen=True)
class Schedule:
    """How one conv/linear GEMM runs: its tile, and how many slices its reduction is split into."""
    tile: Tile | MmaTile
    splits: int = 1
    chunk: int = 0  # reduction values per split (a multiple of the tile's BK)


def schedules(m: int, k: int, r: int, groups: int, rows_multiple: int = 1, tensor_cores: bool = False,
              register_staged: bool = False, half: bool = False) -> list[Schedule]:
    """The default schedule first (a heuristic, good without measuring), then the few alternatives
    an autotuner may time on the device: other tiles, a deeper BK, half or twice the splits.
    `tensor_cores`: the tiles of the mma kernels (whose fragments' 8-row halves hold whole windows
    of a fused pool of `rows_multiple` pixels); `register_staged`: the mma kernel stages its loads
    in registers and two shared buffers, whatever the tile's cp.async stages; `half`: its operands
    are 16-bit."""
    def make(tile: Tile | MmaTile, splits: int | None = None) -> Schedule:
        if register_staged and isinstance(tile, MmaTile):
            tile = dataclasses.replace(tile, stages=2)
        if rows_multiple != 1 or groups != 1:  # fused pools and grouped convs do not split
            return Schedule(tile)
        return _split(tile, r, default_splits(m, k, r, tile) if splits is None else splits)

    if tensor_cores:
        found = [make(choose_mma_tile(m, k, deep=half and not register_staged))]
        alternatives = [make(t) for t in (*MMA_TILES.values(), *MMA_DEEP_TILES.values()) if t.bn <= 2 * k]
    else:
        found = [make(choose_tile(m, k, rows_multiple))]
        alternatives = [make(t) for t in (TILES["large"], TILES["wide"], *DEEP_TILES.values(), TILES["small"])
                        if t.tm % rows_multiple == 0 and t.bn <= 2 * k]
    if found[0].splits > 1:
        alternatives += [make(found[0].tile, s) for s in (1, found[0].splits // 2, 2 * found[0].splits)
                         if r // s >= 2 * found[0].tile.bk]
    for candidate in alternatives:
        if candidate not in found:
            found.append(candidate)
    return found


def _split(tile: Tile | MmaTile, r: int, splits: int) -> Schedule:
    """The reduction of r values in at most `splits` slices, each a whole number of BK steps."""
    chunk = cdiv(cdiv(r, splits), tile.bk) * tile.bk
    return Schedule(tile, cdiv(r, chunk), chunk) if cdiv(r, chunk) > 1 else Schedule(tile)


def choose_tile(m: int, k: int, rows_multiple: int = 1) -> Tile:
    """Largest tile that still gives enough blocks to fill the GPU (about 2 per SM on 132 SMs);
    `rows_multiple`: a thread's rows must hold whole pooling windows."""
    fits = [name for name, t in TILES.items() if t.tm % rows_multiple == 0]
    for name in ("large", "wide", "small"):
        t = TILES[name]
        if name in fits and k >= t.bn and cdiv(m, t.bm) * cdiv(k, t.bn) >= 264:
            return t
    for name in ("narrow", "small", "wide") if k <= 32 else ("small", "wide", "narrow"):
        if name in fits:
            return TILES[name]
    raise ValueError(f"no tile holds windows of {rows_multiple} rows")


def choose_mma_tile(m: int, k: int, deep: bool = False) -> MmaTile:
    """As `choose_tile`, among the tensor-core tiles; `deep`: BK = 32 where the tile has such a
    variant (all but the largest), for 16-bit operands copied by cp.async: a slice of 32 is 64
    bytes of a row, and each slice's fixed costs (its copies' addresses, the wait, the barrier) are
    spread over two m16n8k16 steps instead of one (resnet18 at batch 64, fp16: 2.2 SASS
    instructions per 1024 multiply-adds in the main loops, median, against 2.8; `bench/sass_loops.py`)."""
    for name in ("mma_large", "mma_wide", "mma_small"):
        t = MMA_TILES[name]
        if k >= t.bn and cdiv(m, t.bm) * cdiv(k, t.bn) >= 264:
            break
    else:
        name = "mma_narrow" if k <= 32 else "mma_small"
    return MMA_DEEP_TILES.get(f"{name}32", MMA_TILES[name]) if deep else MMA_TILES[name]


def default_splits(m: int, k: int, r: int, tile: Tile | MmaTile) -> int:
    """Split the reduction when the output alone gives too few blocks to fill the GPU (batch 1,
    late layers): aim at about 2 blocks per SM on 132 SMs, each slice at least 128 values."""
    blocks = cdiv(m, tile.bm) * cdiv(k, tile.bn)
    return 1 if blocks >= 132 or r < 256 else min(16, cdiv(264, blocks), r // 128)
