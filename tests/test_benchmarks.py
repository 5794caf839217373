"""benchmarks/throughput.py runs with tiny settings and prints its JSON lines (no timing is asserted)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"
REQUIRED = {"width", "device", "dtype", "camri_img_s", "conventional_img_s", "speedup_vs_conventional",
            "train_gflop_per_img", "peak_gflop_s", "fraction_of_peak", "eval_share_of_epoch", "loadavg"}
TINY = ["--quick", "--device", "cpu", "--widths", "0.0625", "--seconds", "0.05", "--pngs", "64",
        "--batch-size", "8", "--eval-batch-size", "16", "--threads", "1"]
# One thread: on a machine whose cores are busy with other work (a CI runner, parallel tests), PyTorch's
# OpenMP threads wait on each other and a tiny run takes many times longer.


def _run(*args: str) -> list[dict]:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_throughput_prints_one_json_line_per_configuration_and_updates_the_table(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nprose before\n\n<!-- throughput:cpu:begin -->\nan old table\n"
                   "<!-- throughput:cpu:end -->\n\nprose after\n")
    rows = _run(*TINY, "--num-workers", "1", "--doc", str(doc))
    assert [(r["width"], r["dtype"]) for r in rows] == [(0.0625, "float32"), (0.0625, "bfloat16")]
    for row in rows:
        assert REQUIRED <= set(row), REQUIRED - set(row)
        assert row["device"] == "cpu"
        for key in ("camri_img_s", "conventional_img_s", "speedup_vs_conventional", "train_gflop_per_img",
                    "peak_gflop_s", "fraction_of_peak"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert 0 < row["eval_share_of_epoch"] < 1
        assert len(row["loadavg"]) == 3
    text = doc.read_text()
    assert "an old table" not in text
    assert text.startswith("# Performance\n\nprose before\n") and text.rstrip().endswith("prose after")
    assert "| 0.0625 | float32 |" in text and "| 0.0625 | bfloat16 |" in text
    assert "benchmarks/throughput.py --quick" in text


def test_quick_run_without_doc_leaves_the_docs_alone(tmp_path):
    doc = ROOT / "docs" / "performance.md"
    before = doc.read_text() if doc.exists() else None
    rows = _run(*TINY, "--dtypes", "float32", "--num-workers", "0")
    assert len(rows) == 1 and rows[0]["dtype"] == "float32"
    assert (doc.read_text() if doc.exists() else None) == before


def test_concurrency_mode_reports_the_aggregate_of_k_processes():
    rows = _run("--quick", "--concurrency", "1,2", "--widths", "0.0625", "--dtypes", "float32",
                "--batch-size", "8", "--seconds", "0.2", "--worker-startup-s", "0", "--threads", "1")
    assert [r["processes"] for r in rows] == [1, 2]
    for row in rows:
        assert row["kind"] == "concurrency" and len(row["per_process_img_s"]) == row["processes"]
        assert row["aggregate_img_s"] > 0 and row["threads_per_process"] >= 1


def test_members_mode_trains_k_stacked_networks_and_compares_with_one():
    rows = _run("--members", "1,2", "--widths", "0.0625", "--dtypes", "float32", "--batch-size", "8",
                "--seconds", "0.1", "--threads", "1")
    assert [r["members"] for r in rows] == [1, 2]
    assert rows[0]["vs_one_run"] == 1.0
    for row in rows:
        assert row["kind"] == "members" and row["aggregate_img_s"] > 0
        assert row["img_s_per_member"] == pytest.approx(row["aggregate_img_s"] / row["members"], rel=1e-3)
