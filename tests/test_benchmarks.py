"""benchmarks/throughput.py and gpu_checks.py run with tiny settings and print their JSON lines, and the
benchmark's checks of its own numbers, on fabricated measurements (no timing is asserted)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"
REQUIRED = {
    "width",
    "device",
    "dtype",
    "channels_last",
    "camri_img_s",
    "plain_img_s",
    "conventional_img_s",
    "speedup_vs_conventional",
    "train_gflop_per_img",
    "peak_gflop_s",
    "peak_dtype",
    "fraction_of_peak",
    "eval_share_of_epoch",
    "loadavg",
    "real_img_s",
    "real_vs_loop",
    "real_epoch_s",
    "real_epoch_fraction_of_peak",
    "errors",
}
TINY = [
    "--quick",
    "--device",
    "cpu",
    "--widths",
    "0.0625",
    "--seconds",
    "0.05",
    "--pngs",
    "64",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "16",
    "--threads",
    "1",
]
# One thread: on a machine whose cores are busy with other work (a CI runner, parallel tests), PyTorch's
# OpenMP threads wait on each other and a tiny run takes many times longer.


def _load(name: str):
    """A benchmarks/ module (throughput.py puts benchmarks/ on sys.path for its siblings)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _in_doc(text: str, row: dict) -> bool:
    """The row is in the table, or under "Rejected" (tiny runs under load may fail the agreement check)."""
    layout = "channels_last" if row["channels_last"] else "NCHW"
    return (
        f"| {row['width']} | {row['dtype']} | {layout} |" in text
        or f"- width {row['width']} {row['dtype']} {layout}: " in text
    )


def _run(*args: str) -> list[dict]:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_throughput_prints_one_json_line_per_configuration_and_updates_the_table(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(
        "# Performance\n\nprose before\n\n<!-- throughput:cpu:begin -->\nan old table\n"
        "<!-- throughput:cpu:end -->\n\nprose after\n"
    )
    rows = _run(
        *TINY,
        "--num-workers",
        "1",
        "--dtypes",
        "float32",
        "bfloat16",
        "--channels-last",
        "on",
        "off",
        "--doc",
        str(doc),
    )
    assert [(r["width"], r["dtype"], r["channels_last"]) for r in rows] == [
        (0.0625, "float32", True),
        (0.0625, "float32", False),
        (0.0625, "bfloat16", True),
        (0.0625, "bfloat16", False),
    ]
    for row in rows:
        assert REQUIRED <= set(row), REQUIRED - set(row)
        assert row["device"] == "cpu"
        for key in (
            "camri_img_s",
            "plain_img_s",
            "conventional_img_s",
            "speedup_vs_conventional",
            "train_gflop_per_img",
            "peak_gflop_s",
            "fraction_of_peak",
            "real_img_s",
            "real_epoch_s",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert 0 < row["eval_share_of_epoch"] < 1
        assert len(row["loadavg"]) == 3
        # The real camri train trained on every image of its data set: 4 batches of 8, but at least 50 images.
        assert row["real_images"] == 50 and row["real_batches"] == 7
        # The timed calls trained on as many images as they counted: whole batches of the measured size.
        assert row["train_images_timed"] % row["measured_batch_size"] == 0
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # emulated bf16 is held to the float32 peak
        assert [r["peak_dtype"] for r in rows] == ["float32"] * 4
    text = doc.read_text()
    assert "an old table" not in text
    assert text.startswith("# Performance\n\nprose before\n") and text.rstrip().endswith("prose after")
    assert all(_in_doc(text, row) for row in rows)
    assert "benchmarks/throughput.py --quick" in text


def test_quick_run_without_doc_leaves_the_docs_alone(tmp_path):
    doc = ROOT / "docs" / "performance.md"
    before = doc.read_text() if doc.exists() else None
    rows = _run(*TINY, "--dtypes", "float32", "--num-workers", "0", "--no-real-run")
    assert len(rows) == 1 and rows[0]["dtype"] == "float32" and "real_img_s" not in rows[0]
    assert any("--no-real-run" in note for note in rows[0]["notes"])
    assert (doc.read_text() if doc.exists() else None) == before


def test_concurrency_mode_reports_the_aggregate_of_k_processes():
    rows = _run(
        "--quick",
        "--concurrency",
        "1,2",
        "--widths",
        "0.0625",
        "--dtypes",
        "float32",
        "--batch-size",
        "8",
        "--seconds",
        "0.2",
        "--worker-startup-s",
        "0",
        "--threads",
        "1",
    )
    assert [r["processes"] for r in rows] == [1, 2]
    for row in rows:
        assert row["kind"] == "concurrency" and len(row["per_process_img_s"]) == row["processes"]
        assert row["aggregate_img_s"] > 0 and row["threads_per_process"] >= 1


def test_members_mode_trains_k_stacked_networks_and_compares_with_one():
    rows = _run(
        "--members",
        "1,2",
        "--widths",
        "0.0625",
        "--dtypes",
        "float32",
        "--batch-size",
        "8",
        "--seconds",
        "0.1",
        "--threads",
        "1",
    )
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
    result = subprocess.run(
        [
            sys.executable,
            str(GPU_CHECKS),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
            "--data",
            "digits",
            "--width",
            "0.0625",
            "--z-dim",
            "8",
            "--epochs",
            "1",
            "--important",
            "3",
            "--seeds",
            "0",
            "--budget-s",
            "400",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = [json.loads(line).get("kind", "table") for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert kinds.count("table") == 1 and kinds.count("concurrency") == 2 and kinds.count("members") == 2
    table_row = json.loads((out / "throughput.jsonl").read_text().splitlines()[0])
    assert table_row["dtype"] == "float32" and "real_img_s" in table_row
    assert _in_doc((out / "performance-cpu.md").read_text(), table_row)
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
    files = {
        f"set/{split}/{cls}/{i}.jpg": bytes([i, len(cls)]) * 50
        for split in ("train", "test")
        for cls in ("a", "b")
        for i in range(3)
    }
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    module.pack(tmp_path / "set.zip", tmp_path / "set.tar.xz")
    spec_name = module.dataset_spec(str(tmp_path / "set.tar.xz"), tmp_path / "scratch")
    assert spec_name == f"imagefolder:{tmp_path / 'scratch' / 'data' / 'set'}"
    unpacked = {
        str(p.relative_to(tmp_path / "scratch" / "data")): p.read_bytes()
        for p in (tmp_path / "scratch" / "data").rglob("*.jpg")
    }
    assert unpacked == files
    assert module.dataset_spec("digits", tmp_path) == "digits"


# ---- the benchmark's checks of itself, on fabricated measurements --------------------------------------


def _row(**overrides) -> dict:
    """A plausible width-1.0 float32 row: 36 img/s x 3.4 GFLOP/img = 122 of a 180 GFLOP/s peak (68%)."""
    row = {
        "width": 1.0,
        "dtype": "float32",
        "channels_last": True,
        "device": "cpu",
        "camri_img_s": 36.0,
        "camri_img_s_best": 38.0,
        "camri_eval_img_s": 90.0,
        "plain_img_s": 37.0,
        "camri_vs_plain": 0.973,
        "conventional_img_s": 35.0,
        "speedup_vs_conventional": 1.03,
        "train_gflop_per_img": 3.4,
        "eval_gflop_per_img": 1.1,
        "peak_dtype": "float32",
        "native_bf16": False,
        "peak_gflop_s": 180.0,
        "fraction_of_peak": 0.68,
        "eval_share_of_epoch": 0.074,
        "real_img_s": 34.0,
        "real_vs_loop": 0.944,
        "real_batches": 300,
        "real_epoch_s": 600.0,
        "real_epoch_fraction_of_peak": 0.6,
        "real_comparable": True,
        "batch_size": 64,
        "measured_batch_size": 64,
        "seconds": 700.0,
        "loadavg_start": [0.1],
        "loadavg": [1.9],
        "notes": [],
    }
    row.update(overrides)
    return row


def test_a_plausible_row_passes_every_check():
    assert _load("checks").row_errors(_row()) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        # 35,332 img/s at width 0.25 (0.214 GFLOP/img) against a 158 GFLOP/s peak: the stale-cache row.
        (
            {
                "width": 0.25,
                "camri_img_s": 35332.0,
                "train_gflop_per_img": 0.214,
                "peak_gflop_s": 158.0,
                "camri_eval_img_s": 90000.0,
                "real_img_s": 35000.0,
            },
            "camri's training loop at 35332.0 img/s is 4785%",
        ),
        ({"plain_img_s": 60.0}, "the plain training loop at 60.0 img/s is 113%"),
        ({"real_img_s": 60.0}, "the real camri train run at 60.0 img/s"),
        ({"camri_eval_img_s": 200.0}, "evaluation at 200.0 img/s is 122%"),
        # The evaluation error: 27 img/s of evaluation against 203 img/s of training.
        (
            {"camri_img_s": 40.0, "camri_eval_img_s": 27.2, "real_img_s": 40.0},
            "evaluation (27.2 img/s) is slower per image than training (40.0 img/s)",
        ),
        ({"real_img_s": 28.0}, "differ by -22%, more than 20%"),
        ({"real_img_s": 44.0}, "differ by +22%, more than 20%"),
    ],
)
def test_a_row_above_a_physical_limit_or_off_the_real_run_is_an_error_naming_it(overrides, message):
    errors = _load("checks").row_errors(_row(**overrides))
    assert len(errors) >= 1 and any(message in e for e in errors), errors
    name = f"width {overrides.get('width', 1.0)} float32 channels_last: "
    assert all(e.startswith(name) for e in errors)


def test_the_agreement_check_allows_20_percent_and_skips_runs_that_do_not_compare():
    checks = _load("checks")
    assert checks.row_errors(_row(real_img_s=29.0)) == []  # -19%
    assert checks.row_errors(_row(real_img_s=20.0, real_comparable=False)) == []  # --compile
    no_real = _row()
    del no_real["real_img_s"]
    assert checks.row_errors(no_real) == []


def test_targets_and_bf16_speedups_are_reported_from_the_rows():
    checks = _load("checks")
    fp32 = _row(fraction_of_peak=0.55, camri_vs_plain=0.8, plain_img_s=45.0)
    bf16 = _row(
        dtype="bfloat16", native_bf16=True, camri_img_s=72.0, fraction_of_peak=0.45, plain_img_s=None, real_img_s=70.0
    )
    lines = checks.targets([fp32, bf16])
    assert "NOT met: width 1.0 float32 channels_last >= 60% of the float32 peak (55.0%)" in lines
    assert "NOT met: width 1.0 float32 channels_last: camri's loop within 10% of a plain loop (0.80x)" in lines
    assert "met: width 1.0 bfloat16 channels_last >= 40% of the bf16 peak (45.0%)" in lines
    assert "met: width 1.0 channels_last: bf16 >= 1.5x float32 on native bf16 (2.00x)" in lines
    assert checks.bf16_speedups([fp32, bf16]) == [(1.0, "channels_last", 2.0)]
    assert checks.bf16_speedups([fp32, dict(bf16, native_bf16=False)]) == []  # emulated: no choice to make


def test_the_benchmark_exits_non_zero_and_leaves_a_rejected_row_out_of_the_table(tmp_path, monkeypatch, capsys):
    throughput = _load("throughput")
    good, bad = _row(), _row(width=0.25, camri_img_s=35332.0, train_gflop_per_img=0.214, camri_eval_img_s=9e4)
    rows = iter([good, bad])

    def fabricated(args, width, dtype, channels_last, *rest):
        row = next(rows)
        row["errors"] = throughput.checks.row_errors(row)
        return row

    monkeypatch.setattr(throughput, "measure_config", fabricated)
    monkeypatch.setattr(throughput, "measure_peaks", lambda args, device, info: {"native_bf16": False})
    monkeypatch.setattr(throughput, "count_flops", lambda args, width, device: (1.0, 1.0))
    monkeypatch.setattr(throughput, "write_pngs", lambda root, count: None)
    doc = tmp_path / "performance.md"
    # One memory format pinned: on a native-bf16 CPU the default measures both, and rows would run out.
    argv = ["--widths", "1.0", "0.25", "--dtypes", "float32", "--channels-last", "on", "--doc", str(doc)]
    argv += ["--peak-sizes", "64"]
    assert throughput.main(argv) == 1
    assert "ERROR width 0.25 float32 channels_last: camri's training loop" in capsys.readouterr().err
    text = doc.read_text()
    assert "| 1.0 | float32 | channels_last | 36.0 (38.0) |" in text
    assert "| 0.25 |" not in text
    assert "Rejected" in text and "- width 0.25 float32 channels_last: camri's training loop at 35332.0" in text
    rows = iter([good, dict(bad)])
    assert throughput.main(argv + ["--quick"]) == 0  # --quick reports, does not fail


def test_the_benchmark_counts_the_images_its_calls_train_and_evaluate():
    """The stale-cache bug (issue 13) counted steps x batch images while training on a cached 64: here every
    image the timed calls report must have gone through the model, by a forward hook's count."""
    throughput = _load("throughput")
    args = throughput.parse_args(["--quick", "--widths", "0.0625", "--batch-size", "8", "--eval-batch-size", "16"])
    device = torch.device("cpu")
    pool = throughput.synthetic_dataset(96, 40)
    loop = throughput.CamriLoop(args, 0.0625, False, True, device)
    seen = {"train": 0, "eval": 0}
    loop.model.backbone.register_forward_pre_hook(
        lambda m, inputs: seen.__setitem__(
            "train" if m.training else "eval", seen["train" if m.training else "eval"] + len(inputs[0])
        )
    )
    result = throughput.measure_camri(loop, pool, 8, 16, 0.05, [], 1e6, 1e12)
    assert seen["train"] == 8 + result["train_images_timed"]  # the warm-up batch, then the timed calls
    n_eval = result["measured_eval_images"]  # the time box may shrink it below the eval batch
    assert result["train_images_timed"] > 0 and 2 <= n_eval <= 16
    assert seen["eval"] % n_eval == 0 and seen["eval"] >= 2 * n_eval  # warm-up + at least one timed call


def test_the_real_run_parser_reads_camri_trains_own_epoch_line(tmp_path, capsys):
    from camri import data as camri_data
    from camri.train import TrainConfig, train

    digits = camri_data.load("digits")
    train(
        TrainConfig(dataset="digits", loss="ce", epochs=1, width=0.125, z_dim=8, device="cpu"), tmp_path, dataset=digits
    )
    rates = _load("real_run").parse_epoch_rates(capsys.readouterr().err)
    # The run trains on what its validation split leaves; the logged evaluation is the test set's.
    assert rates["images"] == len(digits.with_validation(0.1).y_train) and rates["eval_images"] == len(digits.y_test)
    assert rates["img_s"] > 0 and rates["eval_img_s"] > 0
    with pytest.raises(ValueError, match="no epoch line"):
        _load("real_run").parse_epoch_rates("camri train: error: something else")
