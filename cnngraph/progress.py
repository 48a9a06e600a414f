"""Progress bars for long work (predict, autotuning, benchmarks): tqdm's bar, with rate and ETA, on
stderr when stderr is a terminal; otherwise (a log file, a pipe, no tqdm) a silent stand-in with
the same methods, so output that is not a terminal gets no bar characters."""

from __future__ import annotations

import sys


def progress_bar(total: int | None = None, desc: str | None = None, unit: str = "it"):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
    return _Silent()


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stderr)
