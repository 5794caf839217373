"""A run's records without their wall times, the only fields that differ between two runs of one config:
what the resume, crash and executor tests compare."""

import csv
import json
from pathlib import Path


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv as rows of strings, without ``seconds``."""
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def summary_record(run_dir: Path) -> dict:
    """summary.json without ``seconds``."""
    record = json.loads((Path(run_dir) / "summary.json").read_text())
    record.pop("seconds")
    return record
