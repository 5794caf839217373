"""benchmarks/throughput.py and gpu_checks.py run with tiny settings and print their JSON lines (no timing is
asserted)."""

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


GPU_CHECKS = ROOT / "benchmarks" / "gpu_checks.py"


def test_gpu_checks_script_runs_every_step_and_bundles_the_runs(tmp_path):
    """The prepared GPU script, on the CPU with tiny settings: benchmark lines, a log, and the runs."""
    import tarfile

    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(GPU_CHECKS), "--device", "cpu", "--quick", "--out", str(out),
                             "--data", "digits", "--width", "0.0625", "--z-dim", "8", "--epochs", "1",
                             "--important", "3", "--seeds", "0", "--budget-s", "400"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = [json.loads(line).get("kind", "table") for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert kinds.count("table") == 2 and kinds.count("concurrency") == 2 and kinds.count("members") == 2
    assert "| 0.0625 | float32 |" in (out / "performance-cpu.md").read_text()
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"ce-seed0/summary.json", "camri-seed0/metrics.csv", "camri-seed0/angles.npz"} <= names
    assert not any(name.endswith("checkpoint.pt") for name in names)
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files


def test_gpu_checks_pack_keeps_every_file_byte_for_byte(tmp_path):
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("gpu_checks", GPU_CHECKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = {f"set/{split}/{cls}/{i}.jpg": bytes([i, len(cls)]) * 50 for split in ("train", "test")
             for cls in ("a", "b") for i in range(3)}
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    module.pack(tmp_path / "set.zip", tmp_path / "set.tar.xz")
    spec_name = module.dataset_spec(str(tmp_path / "set.tar.xz"), tmp_path / "scratch")
    assert spec_name == f"imagefolder:{tmp_path / 'scratch' / 'data' / 'set'}"
    unpacked = {str(p.relative_to(tmp_path / "scratch" / "data")): p.read_bytes()
                for p in (tmp_path / "scratch" / "data").rglob("*.jpg")}
    assert unpacked == files
    assert module.dataset_spec("digits", tmp_path) == "digits"
