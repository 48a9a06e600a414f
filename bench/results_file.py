"""What every benchmark records about its run, and where it writes the record."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_record(**fields) -> dict:
    """The date and the machine, then the benchmark's own fields."""
    return {"date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
            **fields}


def save(record: dict, name: str) -> Path:
    """Write `record` as bench/results/<name>-<date>.json and say so."""
    out = RESULTS / f"{name}-{record['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parents[1])}")
    return out
