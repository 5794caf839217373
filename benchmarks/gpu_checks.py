#!/usr/bin/env python
"""Every GPU check of issues 8 and 9 in one time-boxed call, for a session that is lent a GPU machine.

    python3 benchmarks/gpu_checks.py --out $OUT --data gpu-carry/cifar10-jpeg.tar.xz --budget-s 540
    .venv/bin/python benchmarks/gpu_checks.py --device cpu --quick --out /tmp/g --data digits   # smoke test

In order, each step with its share of ``--budget-s`` (the device tool allows 600 s per command, and a
session has 15 minutes of device time in all, start-up included):

1. ``benchmarks/throughput.py --device cuda``: the benchmark table (widths 1.0 and 0.25, float32/TF32 and
   bf16 autocast, camri's loop (camri.loop, as ``camri train`` runs it) against a plain loop, the
   conventional DataLoader loop and a real ``camri train`` of 200 batches of each shape, fraction of the
   measured peak, the benchmark's self-checks), written to ``OUT/performance-cuda.md`` to paste into
   docs/performance.md; a row that fails a check is listed there as rejected, and the step's exit status
   (1) is logged;
2. ``--concurrency 1,2,4,8`` (separate processes sharing the GPU) and ``--members 1,2,4,8`` (K seeds
   stacked in one model) at width 0.25 in bf16, and ``--members 1,2,4`` at width 1.0: whether the grid
   should train seeds stacked on a GPU (docs/performance.md, "K seeds as one stacked model");
3. with ``--data``: the paper's CNN at full width on CIFAR-10, cat, CE against CAMRI (m = 4π/64, s = 16),
   ``--seeds`` each, all runs at once on the GPU, for as many epochs as the rest of the budget allows
   (estimated from step 1's width-1.0 bf16 epoch time; docs/reproduction.md). A run still going at the
   deadline is stopped; its metrics.csv holds every finished epoch.

Everything lands in at most 8 files (the device tool returns no more): throughput.jsonl (one JSON line
per measurement), throughput.log, performance-cuda.md, gpu_checks.log, and runs.tar.gz (each run's
config.json, metrics.csv, log.txt, summary.json and angles.npz; no checkpoints).

Data: the CIFAR-10 JPEG zip (63.8 MB) and the working tree together exceed the device tool's 64 MiB
carry limit, so carry the same JPEG files as a solid tar.xz (about 21 MB: the files' identical JPEG
headers compress away); ``--data`` unpacks it. Prepare it on the development machine with::

    mkdir -p gpu-carry && echo /gpu-carry/ >> .git/info/exclude
    .venv/bin/python benchmarks/gpu_checks.py --pack ../shared/data/cifar10-jpeg.zip gpu-carry/cifar10-jpeg.tar.xz

and call the device tool with ``carry: ["gpu-carry"]``. The device image has its own python3 with torch
(not this project's venv); camri.train, camri.data and the benchmark need only torch, numpy, PIL, tqdm
and torchvision, which it has.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = ROOT / "benchmarks" / "throughput.py"
RUN_FILES = ("config.json", "metrics.csv", "log.txt", "summary.json", "angles.npz")


class Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"[gpu_checks {time.strftime('%H:%M:%S')}] {message}"
        print(line, file=sys.stderr, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def pack(zip_path: Path, out: Path) -> None:
    """The members of a zip (JPEG files: stored, not compressed) as one solid .tar.xz, byte for byte."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(zip_path) as archive, tarfile.open(tmp, "w:xz") as tar:
        for info in archive.infolist():
            if info.is_dir():
                continue
            member = tarfile.TarInfo(info.filename)
            member.size = info.file_size
            member.mtime = time.mktime(info.date_time + (0, 0, -1))
            with archive.open(info) as f:
                tar.addfile(member, f)
    os.replace(tmp, out)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB (from {zip_path.stat().st_size / 1e6:.1f} MB)")


def dataset_spec(data: str, scratch: Path) -> str:
    """A camri.data name for ``data``: a .tar.xz / .tar.gz / .tar is unpacked into ``scratch`` first."""
    path = Path(data)
    if path.is_file() and any(data.endswith(s) for s in (".tar.xz", ".tar.gz", ".tgz", ".tar")):
        target = scratch / "data"
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
        tops = [p for p in target.iterdir() if p.is_dir()]
        return f"imagefolder:{tops[0] if len(tops) == 1 else target}"
    if path.exists():
        return f"imagefolder:{path.resolve()}"
    return data  # a camri.data name (digits, cifar10, ...)


def run_step(log: Log, command: list[str], timeout_s: float, stdout, stderr) -> int:
    log(f"$ {' '.join(command)}  (at most {timeout_s:.0f} s)")
    if timeout_s < 5:
        log("skipped: no time left")
        return -1
    try:
        return subprocess.run(command, stdout=stdout, stderr=stderr, timeout=timeout_s, cwd=ROOT).returncode
    except subprocess.TimeoutExpired:
        log("stopped at its time limit")
        return -2


def epoch_estimate(jsonl: Path, device: str, width: float) -> float | None:
    """Estimated seconds per CIFAR-10 epoch (training + evaluation) of one run, from the benchmark table."""
    if not jsonl.exists():
        return None
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        if (
            row.get("device") == device
            and row.get("width") == width
            and "cifar10_epoch_s" in row
            and not row.get("errors")  # a row that failed the benchmark's checks is no estimate
            and row.get("dtype") == ("bfloat16" if device == "cuda" else "float32")
        ):
            return float(row["cifar10_epoch_s"])
    return None


TRAIN_CHILD = """
import sys, json
from camri.train import TrainConfig, train
config = TrainConfig(**json.loads(sys.argv[1]))
train(config, sys.argv[2])  # per-epoch lines and progress go to the run's log.txt
"""


def train_runs(args, log: Log, spec: str, scratch: Path, deadline: float, jsonl: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from camri import data as camri_data
    from camri.losses import paper_margin

    data_dir = scratch / "cache"
    log(f"loading {spec} once (the runs then read the cache)")
    dataset = camri_data.load(spec, data_dir=data_dir)
    width = args.width
    per_epoch = epoch_estimate(jsonl, args.device, width)
    runs = [(loss, seed) for loss in ("ce", "camri") for seed in args.seeds]
    left = deadline - time.time() - 30  # keep 30 s to pack the results
    if args.epochs:
        epochs = args.epochs
    elif per_epoch:
        # Several small runs share one GPU well (each alone leaves it mostly idle), but not perfectly:
        # assume they slow each other by half their number (unmeasured before this call; see the log).
        slowdown = max(1.0, len(runs) / 2)
        epochs = max(1, min(300, math.floor(left * 0.9 / (per_epoch * slowdown))))
    else:
        epochs = 1
    log(
        f"{len(runs)} runs ({', '.join(f'{loss} seed {s}' for loss, s in runs)}), width {width}, {epochs} epochs "
        f"(estimated {per_epoch} s per epoch alone, {left:.0f} s left)"
    )
    cat = dataset.classes.index(args.important) if args.important in dataset.classes else int(args.important)
    out_root = scratch / "runs"
    procs = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(runs)))}
    for loss, seed in runs:
        config = dict(
            dataset=spec,
            loss=loss,
            important=[cat],
            margin=[paper_margin(4)],
            scale=16.0,
            epochs=epochs,
            width=width,
            z_dim=args.z_dim,
            bn_momentum=0.01,
            seed=seed,
            device=args.device,
            data_dir=str(data_dir),
        )
        out = out_root / f"{loss}-seed{seed}"
        out.mkdir(parents=True)
        log_file = open(out / "log.txt", "w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", TRAIN_CHILD, json.dumps(config), str(out)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                ),
                out,
            )
        )
    while any(p.poll() is None for p, _ in procs) and time.time() < deadline - 30:
        time.sleep(2)
    for p, out in procs:
        if p.poll() is None:
            log(f"{out.name}: stopped at the deadline (metrics.csv has its finished epochs)")
            p.send_signal(signal.SIGINT)
    for p, out in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
        done = (out / "summary.json").exists()
        metrics = out / "metrics.csv"
        epochs_done = max(0, len(metrics.read_text().splitlines()) - 1) if metrics.exists() else 0
        log(f"{out.name}: exit {p.returncode}, {epochs_done} epochs, {'finished' if done else 'not finished'}")
    return out_root


def bundle(out_root: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz") as tar:
        for run in sorted(out_root.iterdir()):
            for name in RUN_FILES:
                if (run / name).exists():
                    tar.add(run / name, arcname=f"{run.name}/{name}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-checks")))
    p.add_argument("--data", default=None, help="CIFAR-10 folder, .zip or .tar.xz (or a camri.data name)")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for everything")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    p.add_argument("--important", default="cat", help="class name or index")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--z-dim", type=int, default=512)
    p.add_argument("--epochs", type=int, default=None, help="fixed epochs (default: what the budget allows)")
    p.add_argument("--quick", action="store_true", help="tiny benchmark settings: a smoke test of this script")
    p.add_argument(
        "--pack",
        nargs=2,
        type=Path,
        metavar=("ZIP", "TAR_XZ"),
        help="only repack a data zip as a solid .tar.xz for carrying, and exit",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pack:
        pack(*args.pack)
        return 0
    start = time.time()
    deadline = start + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / "gpu_checks.log")
    jsonl = args.out / "throughput.jsonl"
    bench_log = open(args.out / "throughput.log", "a")
    py = [sys.executable, str(THROUGHPUT), "--device", args.device]
    tiny = (
        ["--quick", "--widths", "0.0625", "--seconds", "0.05", "--batch-size", "8", "--threads", "1"]
        if args.quick
        else []
    )
    # Shares of the budget: the table 40% (it includes a real camri train per row), concurrency 12%,
    # members 12%; the training runs get the rest.
    budget = args.budget_s
    table = tiny + ["--dtypes", "float32"] if args.quick else ["--real-run-batches", "200"]
    with open(jsonl, "a") as out:
        rc = run_step(
            log,
            py
            + table
            + ["--doc", str(args.out / f"performance-{args.device}.md"), "--pngs", "64" if args.quick else "2048"],
            0.40 * budget,
            out,
            bench_log,
        )
        if rc != 0:
            log(
                f"the benchmark table exited with status {rc} (1: a row failed its checks; see "
                f"performance-{args.device}.md, 'Rejected', and throughput.log)"
            )
        small = tiny or ["--widths", "0.25", "--seconds", "4"]
        run_step(
            log,
            py
            + small
            + [
                "--dtypes",
                "bfloat16" if args.device == "cuda" else "float32",
                "--concurrency",
                "1,2" if args.quick else "1,2,4,8",
                "--worker-startup-s",
                "0" if args.quick else "15",
            ],
            0.12 * budget,
            out,
            bench_log,
        )
        dtype = ["--dtypes", "bfloat16" if args.device == "cuda" else "float32"]
        run_step(
            log, py + small + dtype + ["--members", "1,2" if args.quick else "1,2,4,8"], 0.08 * budget, out, bench_log
        )
        if not args.quick:
            run_step(
                log,
                py + ["--widths", "1.0", "--seconds", "3"] + dtype + ["--members", "1,2,4"],
                0.04 * budget,
                out,
                bench_log,
            )
    if args.data:
        with tempfile.TemporaryDirectory(prefix="camri-gpu-") as scratch:
            scratch = Path(scratch)
            spec = dataset_spec(args.data, scratch)
            out_root = train_runs(args, log, spec, scratch, deadline, jsonl)
            bundle(out_root, args.out / "runs.tar.gz")
    log(f"done in {time.time() - start:.0f} s of a {budget:.0f} s budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
