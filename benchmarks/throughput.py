#!/usr/bin/env python
"""Training throughput of camri against the hardware's limit and a conventional PyTorch loop (issue 8).

    .venv/bin/python benchmarks/throughput.py                  # CPU, about 3 minutes on 2 cores
    .venv/bin/python benchmarks/throughput.py --device cuda    # on a GPU (bf16 autocast, channels_last)
    .venv/bin/python benchmarks/throughput.py --quick          # seconds: a smoke run, numbers meaningless

For the paper's CNN at each ``--widths`` (default 1.0 and 0.25) on CIFAR-10-shaped random data (3x32x32
uint8, 10 classes), and for each ``--dtypes`` (float32, and bfloat16 autocast), it measures:

- the dense matmul peak of the device in that dtype (best of several square sizes): the hardware limit;
- the model's training FLOPs per image (``torch.utils.flop_counter.FlopCounterMode`` over forward +
  backward of one batch) and its evaluation FLOPs per image (forward only);
- camri's own training step (``camri.train.Run._train_epoch`` on an in-memory ``camri.data.DataSet``) and
  evaluation pass (``Run.evaluate``), in images/s, and the fraction of the dtype's peak each reaches;
- a conventional loop for the same model: a torchvision ``ImageFolder`` of PNG files with ``ToTensor``,
  a ``DataLoader`` (``--num-workers``), the same model, loss, optimiser, autocast and memory format.

Every measurement is time-boxed (``--seconds`` of timed work after a warm-up step). When one training
step of ``--batch-size`` images would take far longer than that (bfloat16 on a CPU without native bf16
runs about 50x slower than float32), the step is measured on a smaller batch and the line says so in
``measured_batch_size`` and ``notes``.

Output: one JSON line per (width, dtype) on stdout (progress goes to stderr), with ``width``, ``device``,
``dtype``, ``camri_img_s``, ``conventional_img_s``, ``speedup_vs_conventional``, ``train_gflop_per_img``,
``peak_gflop_s``, ``fraction_of_peak``, ``eval_share_of_epoch`` (evaluating a 10,000-image test set over
a 50,000-image training epoch plus that evaluation, extrapolated from the measured rates), the load
average, and the machine. Without ``--quick`` (or with ``--doc PATH``) the table between the markers in
docs/performance.md is replaced by this run's.

``--concurrency 1,2`` instead measures the aggregate training images/s of K processes running at once
(each a time-boxed camri training loop, ``--threads`` per process or cores/K), one JSON line per K.
``--members 1,2,4`` measures K networks stacked in one model (``PaperCNN(members=K)``, grouped
convolutions: K seeds of one configuration trained at once), aggregate images/s, one JSON line per K.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from camri import data as camri_data  # noqa: E402
from camri.losses import build_loss  # noqa: E402
from camri.models import Classifier, PaperCNN  # noqa: E402
from camri.train import Run, TrainConfig, cpu_has_bf16, resolve_channels_last  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
DOC = ROOT / "docs" / "performance.md"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ---- the machine --------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_bf16(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the hardware limit -------------------------------------------------------------------------------

def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: list[int], seconds: float) -> tuple[float, int]:
    """Best dense matmul rate (FLOP/s) over square sizes; stops growing when a size would be too slow."""
    best, best_n = 0.0, 0
    per_size = seconds / len(sizes)
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)  # warm-up (kernel selection, page faults)
        sync(device)
        spent, calls = 0.0, 0
        while spent < per_size or calls < 3:
            start = time.perf_counter()
            torch.matmul(a, b)
            sync(device)
            elapsed = time.perf_counter() - start
            spent += elapsed
            calls += 1
            rate = 2 * n ** 3 / elapsed
            if rate > best:
                best, best_n = rate, n
            if spent > 2 * per_size:
                break
        # The next size costs 8x as much: stop when it would not fit its share.
        if 8 * 2 * n ** 3 / best > per_size:
            break
    return best, best_n


# ---- the model's FLOPs --------------------------------------------------------------------------------

def build_model(width: float, loss: str, device: torch.device, channels_last: bool) -> Classifier:
    """The paper CNN with a head, as camri.train.Run._build makes it."""
    torch.manual_seed(0)
    model = Classifier(PaperCNN(in_channels=3, width=width, z_dim=512),
                       build_loss(loss, 10, 512, important=[3])).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def count_flops(width: float, loss: str, device: torch.device) -> tuple[float, float]:
    """(training FLOPs per image: forward + backward, evaluation FLOPs per image: forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(width, loss, device, channels_last=False)
    n = 4
    x = torch.rand(n, 3, 32, 32, device=device)
    y = torch.arange(n, device=device) % 10
    model.train()
    with FlopCounterMode(display=False) as counter:
        model.head(model(x), y).backward()
    train = counter.get_total_flops() / n
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return train, counter.get_total_flops() / n


# ---- camri's code path --------------------------------------------------------------------------------

def synthetic_dataset(n_train: int, n_test: int, seed: int = 0) -> camri_data.DataSet:
    g = torch.Generator().manual_seed(seed)
    return camri_data.DataSet(
        name="synthetic-cifar10",
        x_train=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        y_train=torch.randint(0, 10, (n_train,), generator=g),
        x_test=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        y_test=torch.randint(0, 10, (n_test,), generator=g),
        classes=list(CLASSES))


class CamriPath:
    """A camri.train.Run on a synthetic DataSet; measures its own _train_epoch and evaluate."""

    def __init__(self, args, width: float, bf16: bool, pool: camri_data.DataSet, out_dir: str):
        config = TrainConfig(dataset="synthetic-cifar10", loss=args.loss, important=[3] if args.loss in
                             ("wce", "crwwce", "camri") else [], width=width, z_dim=512,
                             batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, seed=0,
                             device=args.device, amp="bf16" if bf16 else "off",
                             channels_last=args.channels_last)
        self.pool = pool
        self.run = Run(config, out_dir, quiet=True, dataset=pool)
        self.model, self.optimizer = self.run._build()
        if args.compile:
            # torch.compile's module forwards attribute access (.head) to the original module, so
            # _train_epoch and evaluate run unchanged on the compiled forward.
            self.model = torch.compile(self.model)
        self.epoch = 0

    def _use(self, n_train: int | None = None, batch: int | None = None, n_test: int | None = None,
             eval_batch: int | None = None) -> None:
        replace = {}
        if n_train is not None:
            replace.update(x_train=self.pool.x_train[:n_train], y_train=self.pool.y_train[:n_train])
        if n_test is not None:
            replace.update(x_test=self.pool.x_test[:n_test], y_test=self.pool.y_test[:n_test])
        self.run.data = dataclasses.replace(self.pool, **replace)
        changes = {k: v for k, v in (("batch_size", batch), ("eval_batch_size", eval_batch)) if v is not None}
        self.run.config = self.run.config.replace(**changes)

    def train_call(self) -> None:
        self.epoch += 1
        self.run._train_epoch(self.model, self.optimizer, self.epoch, None)

    def eval_call(self) -> None:
        self.run.evaluate(self.model)


def time_calls(fn, seconds: float, min_calls: int = 1) -> tuple[float, list[float]]:
    """Call fn until ``seconds`` of it have run (at least min_calls); (total seconds, per-call seconds)."""
    times: list[float] = []
    while sum(times) < seconds or len(times) < min_calls:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sum(times), times


def measure_camri(path: CamriPath, batch: int, seconds: float, notes: list[str], train_flop: float,
                  peak: float) -> dict:
    """Training images/s of camri's _train_epoch, then of evaluate. Time-boxed; see the module doc."""
    # A step predicted (at half the dtype's matmul peak) to take over twice the time box is measured on
    # a smaller batch: bf16 without native CPU support would otherwise need minutes per step.
    mbatch = batch
    predicted = train_flop * batch / (0.5 * peak)
    if predicted > 2 * seconds:
        mbatch = int(max(2, min(batch, seconds / 2 * 0.5 * peak / train_flop)))
        notes.append(f"a step of {batch} images was predicted to take ~{predicted:.0f} s: measured on "
                     f"batches of {mbatch}")
    path._use(n_train=mbatch, batch=mbatch)
    start = time.perf_counter()
    path.train_call()  # warm-up at the measured shape
    warm_rate = mbatch / (time.perf_counter() - start)
    # Steps per _train_epoch call: about a quarter of the time box each, at most the pool.
    steps = int(max(1, min(len(path.pool.y_train) // mbatch, seconds / 4 * warm_rate / mbatch)))
    path._use(n_train=steps * mbatch, batch=mbatch)
    total, times = time_calls(path.train_call, seconds)
    train_rate = steps * mbatch * len(times) / total
    call_rates = [steps * mbatch / t for t in times]

    # Evaluation: forward only, about 3x the training rate; sized to fit the time box.
    eval_batch = path.run.config.eval_batch_size
    n_eval = min(eval_batch, len(path.pool.y_test))
    if n_eval / (3 * train_rate) > seconds / 2:
        n_eval = int(max(2, seconds / 2 * 3 * train_rate))
        notes.append(f"evaluation measured on {n_eval} images per call (eval batch {eval_batch} too slow)")
    path._use(n_test=n_eval, eval_batch=min(eval_batch, n_eval))
    path.eval_call()  # warm-up
    total, eval_times = time_calls(path.eval_call, seconds / 2)
    return {"camri_img_s": train_rate, "camri_img_s_calls": [round(r, 2) for r in call_rates],
            "camri_eval_img_s": n_eval * len(eval_times) / total, "measured_batch_size": mbatch,
            "measured_eval_images": n_eval, "train_steps_timed": steps * len(times)}


# ---- the conventional loop ----------------------------------------------------------------------------

def write_pngs(root: Path, count: int, seed: int = 0) -> None:
    """An ImageFolder of ``count`` random 32x32 RGB PNGs in the ten CIFAR-10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / CLASSES[i % 10] / f"{i:05d}.png")


def measure_conventional(args, width: float, bf16: bool, device: torch.device, png_dir: Path,
                         batch: int, seconds: float) -> float:
    """Images/s of the textbook loop: ImageFolder(PNG) + ToTensor + DataLoader, same model and step."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    channels_last = resolve_channels_last(args.channels_last, device)
    model = build_model(width, args.loss, device, channels_last)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = datasets.ImageFolder(str(png_dir), transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=args.num_workers > 0, generator=torch.Generator().manual_seed(0))
    model.train()

    def batches():
        while True:
            yield from loader

    def step(x, y):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = model(x)
        loss = model.head(z, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # a conventional loop logs the loss of every step

    it = batches()
    step(*next(it))  # warm-up: worker start-up, first kernels
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or images == 0:
        step(*next(it))
        images += batch
    rate = images / (time.perf_counter() - start)
    del it, loader
    return rate


# ---- one configuration --------------------------------------------------------------------------------

def measure_config(args, width: float, dtype: str, device: torch.device, pool, png_dir: Path, flops: dict,
                   peaks: dict, info: dict) -> dict:
    bf16 = dtype == "bfloat16"
    notes: list[str] = []
    load_start = loadavg()
    t0 = time.perf_counter()
    seconds = args.seconds * (args.emulated_bf16_factor if bf16 and not peaks["native_bf16"] else 1.0)
    with tempfile.TemporaryDirectory(prefix="camri-bench-run-") as out:
        path = CamriPath(args, width, bf16, pool, out)
        camri = measure_camri(path, args.batch_size, seconds, notes, flops[width][0], peaks[dtype])
    # The conventional loop is measured on the same batch size as camri, so the two compare directly.
    conventional = measure_conventional(args, width, bf16, device, png_dir, camri["measured_batch_size"],
                                        seconds)
    train_flop, eval_flop = flops[width]
    peak = peaks[dtype]
    if not bf16 and peaks.get("float32_is_tf32"):
        notes.append("float32 on CUDA: cuDNN convolutions use TF32, so the peak is the TF32 matmul rate")
    if bf16 and not peaks["native_bf16"]:
        notes.append("no native bf16 on this CPU: bf16 runs on emulated kernels, and its matmul 'peak' is "
                     "no real limit (the bf16 convolutions beat it)")
    train_s = CIFAR_TRAIN / camri["camri_img_s"]
    eval_s = CIFAR_TEST / camri["camri_eval_img_s"]
    row = {
        "width": width, "device": device.type, "dtype": dtype,
        "camri_img_s": round(camri["camri_img_s"], 2),
        "camri_img_s_best": round(max(camri["camri_img_s_calls"]), 2),
        "camri_eval_img_s": round(camri["camri_eval_img_s"], 2),
        "conventional_img_s": round(conventional, 2),
        "speedup_vs_conventional": round(camri["camri_img_s"] / conventional, 3),
        "train_gflop_per_img": round(train_flop / 1e9, 4),
        "eval_gflop_per_img": round(eval_flop / 1e9, 4),
        "peak_gflop_s": round(peak / 1e9, 1),
        "fraction_of_peak": round(camri["camri_img_s"] * train_flop / peak, 4),
        "eval_fraction_of_peak": round(camri["camri_eval_img_s"] * eval_flop / peak, 4),
        "eval_share_of_epoch": round(eval_s / (train_s + eval_s), 4),
        "cifar10_epoch_s": round(train_s + eval_s, 1),
        "batch_size": args.batch_size,
        "measured_batch_size": camri["measured_batch_size"],
        "eval_batch_size": args.eval_batch_size,
        "measured_eval_images": camri["measured_eval_images"],
        "camri_img_s_calls": camri["camri_img_s_calls"],
        "channels_last": path.run.channels_last,
        "compile": bool(args.compile),
        "num_workers": args.num_workers,
        "loss": args.loss,
        "seconds": round(time.perf_counter() - t0, 1),
        "loadavg_start": load_start,
        "loadavg": loadavg(),
        **info,
        "notes": notes,
    }
    return row


# ---- docs/performance.md ------------------------------------------------------------------------------

def table_markdown(rows: list[dict], command: str, info: dict, started: str) -> str:
    device = rows[0]["device"]
    what = info.get("gpu") if device == "cuda" else info["cpu"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {what}, {info['cores']} cores, {info['threads']} torch threads, torch {info['torch']} "
        f"(CPU capability {info['cpu_capability']}, native CPU bf16: {info['cpu_native_bf16']}); "
        f"run {started}.",
        "",
        "| width | dtype | camri train img/s (best call) | camri eval img/s | conventional img/s | speedup | "
        "train GFLOP/img | peak GFLOP/s | % of peak | eval share of epoch | CIFAR-10 epoch (est.) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        batch = "" if r["measured_batch_size"] == r["batch_size"] else f" (batch {r['measured_batch_size']})"
        lines.append(
            f"| {r['width']} | {r['dtype']} | {r['camri_img_s']:.1f} ({r['camri_img_s_best']:.1f}){batch} | "
            f"{r['camri_eval_img_s']:.1f} | "
            f"{r['conventional_img_s']:.1f} | {r['speedup_vs_conventional']:.2f}x | "
            f"{r['train_gflop_per_img']:.3f} | {r['peak_gflop_s']:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
            f"{100 * r['eval_share_of_epoch']:.1f}% | {_duration(r['cifar10_epoch_s'])} | "
            f"{r['loadavg_start'][0] if r['loadavg_start'] else '?'}-{r['loadavg'][0] if r['loadavg'] else '?'} |")
    notes = sorted({n for r in rows for n in r["notes"]})
    if notes:
        lines += [""] + [f"- {r['width']}/{r['dtype']}: {n}" for r in rows for n in r["notes"]]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def update_doc(path: Path, device: str, body: str) -> None:
    """Replace the text between this device's markers in ``path`` (append a section if they are absent)."""
    begin, end = f"<!-- throughput:{device}:begin -->", f"<!-- throughput:{device}:end -->"
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Latest benchmark table ({device})\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---- many runs at once --------------------------------------------------------------------------------

def worker(args) -> int:
    """One process of --concurrency: a time-boxed camri training loop; prints one JSON line."""
    device = torch.device(args.device)
    pool = synthetic_dataset(max(4096, args.batch_size), 64)
    with tempfile.TemporaryDirectory(prefix="camri-bench-worker-") as out:
        path = CamriPath(args, args.widths[0], args.dtypes[0] == "bfloat16", pool, out)
        path._use(n_train=args.batch_size, batch=args.batch_size)
        path.train_call()  # warm-up
        steps = max(1, min(len(pool.y_train) // args.batch_size, 8))
        path._use(n_train=steps * args.batch_size, batch=args.batch_size)
        if args.start_at:
            time.sleep(max(0.0, args.start_at - time.time()))
        begin = time.time()
        total, times = time_calls(path.train_call, args.seconds)
        print(json.dumps({"img_s": steps * args.batch_size * len(times) / total, "begin": begin,
                          "end": time.time(), "threads": torch.get_num_threads()}), flush=True)
    return 0


def concurrency(args) -> list[dict]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for k in args.concurrency:
        threads = args.threads or max(1, cores // k)
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--widths", str(args.widths[0]),
                   "--dtypes", args.dtypes[0], "--batch-size", str(args.batch_size), "--seconds", str(args.seconds),
                   "--threads", str(threads), "--loss", args.loss, "--channels-last", args.channels_last,
                   "--start-at", str(time.time() + args.worker_startup_s)]
        if args.compile:
            command.append("--compile")
        load_start = loadavg()
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        results = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"a worker failed with exit status {p.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        overlap = min(r["end"] for r in results) - max(r["begin"] for r in results)
        span = max(r["end"] - r["begin"] for r in results)
        row = {"kind": "concurrency", "processes": k, "threads_per_process": threads, "width": args.widths[0],
               "device": args.device, "dtype": args.dtypes[0], "batch_size": args.batch_size,
               "aggregate_img_s": round(sum(r["img_s"] for r in results), 2),
               "per_process_img_s": [round(r["img_s"], 2) for r in results],
               "overlap_fraction": round(max(0.0, overlap) / span, 3) if span > 0 else 1.0,
               "loadavg_start": load_start, "loadavg": loadavg(), "cpu": cpu_model(), "cores": cores,
               "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---- K seeds as one stacked model ---------------------------------------------------------------------

def members(args) -> list[dict]:
    """Aggregate training images/s of K independent networks stacked in one model (PaperCNN(members=K):
    grouped convolutions), each member on its own batch of ``--batch-size`` images with its own head, one
    Adam over all: the same arithmetic as K runs, in one process and one kernel launch per layer."""
    device = torch.device(args.device)
    width, bf16 = args.widths[0], args.dtypes[0] == "bfloat16"
    channels_last = resolve_channels_last(args.channels_last, device)
    pool = synthetic_dataset(max(4096, args.batch_size), 64)
    b, rows, base = args.batch_size, [], None
    for k in args.members:
        torch.manual_seed(0)
        backbone = PaperCNN(in_channels=3, width=width, z_dim=512, members=k)
        heads = torch.nn.ModuleList(build_loss(args.loss, 10, 512, important=[3]) for _ in range(k))
        model = torch.nn.ModuleDict({"backbone": backbone, "heads": heads}).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        x_pool, y_pool = pool.x_train.to(device), pool.y_train.to(device)

        def step():
            # Member i gets its own batch: member-major along the channels, (B, K·3, 32, 32).
            index = torch.stack([torch.randperm(len(y_pool), generator=g)[:b] for _ in range(k)]).to(device)
            x = camri_data.to_float(x_pool[index]).transpose(0, 1).reshape(b, k * 3, 32, 32)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                z = model["backbone"](x)
            z = z.float().view(b, k, 512)
            loss = sum(head(z[:, i], y_pool[index[i]]) for i, head in enumerate(model["heads"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        model.train()
        step()  # warm-up (kernel selection, allocations)
        sync(device)
        load_start = loadavg()
        total, times = time_calls(lambda: (step(), sync(device)), args.seconds, min_calls=3)
        img_s = k * b * len(times) / total
        if k == 1:
            base = img_s
        row = {"kind": "members", "members": k, "width": width, "device": device.type, "dtype": args.dtypes[0],
               "batch_size_per_member": b, "channels_last": channels_last, "threads": torch.get_num_threads(),
               "aggregate_img_s": round(img_s, 2), "img_s_per_member": round(img_s / k, 2),
               "vs_one_run": round(img_s / base, 3) if base else None, "steps": len(times),
               "loadavg_start": load_start, "loadavg": loadavg(), "cpu": cpu_model(), "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        log(f"{k} member(s): {img_s:.1f} img/s in total, {img_s / k:.1f} per member")
        rows.append(row)
    return rows


# ---- main ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (seconds; no doc)")
    p.add_argument("--widths", type=float, nargs="+", default=None,
                   help="channel multipliers of the paper CNN (default 1.0 0.25; 0.125 with --quick)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=64, help="training batch (64 = the paper's)")
    p.add_argument("--eval-batch-size", type=int, default=TrainConfig().eval_batch_size)
    p.add_argument("--seconds", type=float, default=None,
                   help="timed seconds per measurement (default: 9 on CPU, 5 on CUDA, 0.3 with --quick)")
    p.add_argument("--emulated-bf16-factor", type=float, default=0.5,
                   help="scale of --seconds for bf16 on a CPU without native bf16 (it is measured anyway)")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the conventional loop")
    p.add_argument("--pngs", type=int, default=None, help="PNG files of the conventional loop's ImageFolder")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="camri's setting (auto: on for CUDA and CPU); the conventional loop uses the same")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (both loops)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--loss", default="camri", help="head of the model (camri.losses name)")
    p.add_argument("--peak-sizes", type=int, nargs="+", default=None,
                   help="square matmul sizes for the peak (default 256..2048 on CPU, 4096 8192 on CUDA)")
    p.add_argument("--doc", type=Path, default=None,
                   help=f"markdown file whose table to update (default {DOC.relative_to(ROOT)} unless --quick)")
    p.add_argument("--no-doc", action="store_true", help="do not write the table")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's top operators of camri's training step (first width/dtype)")
    p.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   metavar="K1,K2", help="measure K concurrent training processes instead (first width/dtype)")
    p.add_argument("--members", type=lambda s: [int(v) for v in s.split(",")], default=None, metavar="K1,K2",
                   help="measure K networks stacked in one model (K seeds at once; first width/dtype); "
                        "vs_one_run is against K=1 when the list starts with 1")
    p.add_argument("--worker-startup-s", type=float, default=20.0, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.widths is None:
        args.widths = [0.125] if args.quick else [1.0, 0.25]
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else (5.0 if args.device == "cuda" else 9.0)
    if args.pngs is None:
        args.pngs = 256 if args.quick else 4096
    if args.quick and args.peak_sizes is None:
        args.peak_sizes = [128, 256]
    if args.peak_sizes is None:
        args.peak_sizes = [4096, 8192] if args.device == "cuda" else [256, 512, 1024, 2048]
    return args


def profile(args, device: torch.device, pool) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    bf16 = args.dtypes[0] == "bfloat16"
    with tempfile.TemporaryDirectory(prefix="camri-bench-profile-") as out:
        path = CamriPath(args, args.widths[0], bf16, pool, out)
        path._use(n_train=args.batch_size, batch=args.batch_size)
        path.train_call()
        path._use(n_train=3 * args.batch_size, batch=args.batch_size)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            path.train_call()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    if args.worker:
        return worker(args)
    if args.concurrency:
        concurrency(args)
        return 0
    if args.members:
        members(args)
        return 0
    device = torch.device(args.device)
    info = machine(device)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.perf_counter()
    log(f"{info}; load average {loadavg()}")
    if loadavg() and loadavg()[0] > 0.25 * info["cores"]:
        log("warning: the machine is busy (load average above); the numbers will be low and noisy")

    peaks = {"native_bf16": device.type == "cuda" or info["cpu_native_bf16"]}
    # On CUDA, cuDNN runs float32 convolutions on TF32 tensor cores unless torch.backends.cudnn.allow_tf32
    # is off: the float32 limit is then the TF32 matmul rate, so the peak is measured with TF32 too.
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    peaks["float32_is_tf32"] = tf32
    for dtype in args.dtypes:
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32 and dtype == "float32"
        try:
            peak, n = matmul_peak(device, DTYPES[dtype], args.peak_sizes, 0.3 if args.quick else 3.0)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        peaks[dtype] = peak
        log(f"matmul peak {dtype}{' (TF32)' if tf32 and dtype == 'float32' else ''}: {peak / 1e9:.1f} GFLOP/s "
            f"(best at {n}^3)")
    flops = {w: count_flops(w, args.loss, device) for w in args.widths}
    for w, (tr, ev) in flops.items():
        log(f"width {w}: {tr / 1e9:.3f} GFLOP per training image, {ev / 1e9:.3f} per evaluated image")

    n_train = 4096 if args.quick else CIFAR_TRAIN
    n_test = 1024 if args.quick else CIFAR_TEST
    pool = synthetic_dataset(n_train, n_test)
    if args.profile:
        profile(args, device, pool)
    rows = []
    with tempfile.TemporaryDirectory(prefix="camri-bench-pngs-") as png_dir:
        write_pngs(Path(png_dir), args.pngs)
        for width in args.widths:
            for dtype in args.dtypes:
                row = measure_config(args, width, dtype, device, pool, Path(png_dir), flops, peaks, info)
                print(json.dumps(row), flush=True)
                log(f"width {width} {dtype}: camri {row['camri_img_s']:.1f} img/s "
                    f"({100 * row['fraction_of_peak']:.1f}% of peak), eval {row['camri_eval_img_s']:.1f} img/s, "
                    f"conventional {row['conventional_img_s']:.1f} img/s; {row['seconds']} s")
                rows.append(row)
    log(f"done in {time.perf_counter() - t_start:.0f} s; load average {loadavg()}")

    doc = None if args.no_doc else (args.doc or (None if args.quick else DOC))
    if doc is not None:
        command = " ".join(["benchmarks/throughput.py"] + (argv if argv is not None else sys.argv[1:]))
        update_doc(doc, device.type, table_markdown(rows, command, info, started))
        log(f"wrote the table to {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
