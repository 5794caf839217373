#!/usr/bin/env python
"""Training throughput of camri against the hardware's limit, a plain loop, a conventional PyTorch loop,
and a real ``camri train`` of the same shape (issues 8 and 13).

    .venv/bin/python benchmarks/throughput.py                  # CPU: widths 1.0 and 0.25 (~15 min on 2 cores)
    .venv/bin/python benchmarks/throughput.py --device cuda    # on a GPU (float32/TF32 and bf16, channels_last)
    .venv/bin/python benchmarks/throughput.py --quick          # seconds: a smoke run, numbers meaningless

For the paper's CNN at each ``--widths`` on CIFAR-10-shaped random data (3x32x32 uint8, 10 classes), each
``--dtypes`` (float32; bfloat16 autocast by default only where the hardware has bf16) and each memory
format (``--channels-last``), it measures:

- the dense matmul peak of the device (best of several square sizes): the hardware limit. bf16 rows on a
  CPU without native bf16 are held to the float32 peak (emulated kernels cannot beat the FMA units);
- the model's training FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``, forward + backward)
  and evaluation FLOPs per image (forward);
- camri's own loop: ``camri.loop.train_epoch`` and ``camri.loop.evaluate`` (the functions ``camri train``
  runs) on exactly the tensors of each call, in images/s counted from what ``train_epoch`` reports it
  trained on, and the fraction of the peak;
- a plain loop (the same model and Adam on random in-memory batches, nothing else) and a conventional
  one (torchvision ``ImageFolder`` of PNGs, ``ToTensor``, ``DataLoader``);
- a real ``camri train`` of the same shape (``--real-run-batches`` batches, one epoch, on an image folder
  of random PNGs): its images/s from its own log, beside the loop's, and its epoch time as a fraction of
  the peak.

The benchmark checks itself (benchmarks/checks.py): a rate above the measured peak, evaluation slower
per image than training, or a loop figure more than 20% from the real run's is an error; the row is left
out of the table, listed under "Rejected" with the reason, and the run exits with status 1 (``--quick``
only reports them: its numbers are meaningless). The issue's targets are listed as met or not.

Output: one JSON line per (width, dtype, memory format) on stdout (progress on stderr). Without
``--quick`` (or with ``--doc PATH``) the table between the ``<!-- throughput:LABEL:begin/end -->``
markers of docs/performance.md (LABEL = ``--doc-label``, default the device) is replaced by this run's.

``--concurrency 1,2`` instead measures the aggregate training images/s of K processes running at once
(each a time-boxed camri training loop, ``--threads`` per process or cores/K), one JSON line per K.
``--members 1,2,4`` measures K networks stacked in one model (``PaperCNN(members=K)``, grouped
convolutions: K seeds of one configuration trained at once), aggregate images/s, one JSON line per K.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):  # a checkout without `pip install -e .`; checks.py, real_run.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import checks  # noqa: E402
import real_run  # noqa: E402
import report  # noqa: E402
import scaling  # noqa: E402
from camri import data as camri_data  # noqa: E402
from camri.loop import Placement, build_model  # noqa: E402
from camri.train import TrainConfig, cpu_has_bf16, resolve_channels_last  # noqa: E402
from harness import (  # noqa: E402
    CamriLoop,
    loadavg,
    log,
    machine,
    make_model,
    model_config,
    sync,  # noqa: E402
    synthetic_dataset,
    time_calls,
)
from real_run import write_pngs  # noqa: E402

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
DOC = ROOT / "docs" / "performance.md"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
            rate = 2 * n**3 / elapsed
            if rate > best:
                best, best_n = rate, n
            if spent > 2 * per_size:
                break
        # The next size costs 8x as much: stop when it would not fit its share.
        if 8 * 2 * n**3 / best > per_size:
            break
    return best, best_n


# ---- the model, as camri builds it, and its FLOPs ----------------------------------------------------


def count_flops(args, width: float, device: torch.device) -> tuple[float, float]:
    """(training FLOPs per image: forward + backward, evaluation FLOPs per image: forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = build_model(model_config(args, width), in_channels=3, num_classes=10, placement=Placement(device))
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


def measure_camri(
    loop: CamriLoop,
    pool: camri_data.DataSet,
    batch: int,
    eval_batch: int,
    seconds: float,
    notes: list[str],
    train_flop: float,
    peak: float,
) -> dict:
    """Training images/s of camri.loop.train_epoch, then of evaluate. Time-boxed; see the module doc.
    The images counted are those the calls report they processed (``EpochResult.images``)."""
    # A step predicted (at half the dtype's matmul peak) to take over twice the time box is measured on
    # a smaller batch: bf16 without native CPU support would otherwise need minutes per step.
    mbatch = batch
    predicted = train_flop * batch / (0.5 * peak)
    if predicted > 2 * seconds:
        mbatch = int(max(2, min(batch, seconds / 2 * 0.5 * peak / train_flop)))
        notes.append(
            f"a step of {batch} images was predicted to take ~{predicted:.0f} s: measured on batches of {mbatch}"
        )
    x, y = pool.x_train, pool.y_train
    start = time.perf_counter()
    warm = loop.train(x[:mbatch], y[:mbatch], mbatch)  # warm-up at the measured shape
    warm_rate = warm.images / (time.perf_counter() - start)
    # Steps per call: about a quarter of the time box each, at most the pool.
    steps = int(max(1, min(len(y) // mbatch, seconds / 4 * warm_rate / mbatch)))
    n = steps * mbatch
    total, times, results = time_calls(lambda: loop.train(x[:n], y[:n], mbatch), seconds)
    images = sum(r.images for r in results)
    train_rate = images / total

    # Evaluation: forward only, about 3x the training rate; sized to fit the time box.
    n_eval = min(eval_batch, len(pool.y_test))
    if n_eval / (3 * train_rate) > seconds / 2:
        n_eval = int(max(2, seconds / 2 * 3 * train_rate))
        notes.append(f"evaluation measured on {n_eval} images per call (eval batch {eval_batch} too slow)")
    x_test, y_test = pool.x_test[:n_eval], pool.y_test[:n_eval]
    loop.evaluate(x_test, y_test, min(eval_batch, n_eval))  # warm-up
    eval_total, _, counts = time_calls(lambda: loop.evaluate(x_test, y_test, min(eval_batch, n_eval)), seconds / 2)
    return {
        "camri_img_s": train_rate,
        "camri_img_s_calls": [round(r.images / t, 2) for r, t in zip(results, times)],
        "camri_eval_img_s": sum(counts) / eval_total,
        "measured_batch_size": mbatch,
        "measured_eval_images": n_eval,
        "train_images_timed": images,
    }


# ---- reference loops ------------------------------------------------------------------------------------


def timed_steps(step, batch: int, seconds: float, device: torch.device) -> float:
    """Images/s of ``step()`` (one training step of ``batch`` images) over ``seconds``, after a warm-up."""
    step()
    sync(device)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or images == 0:
        step()
        images += batch
    sync(device)
    return images / (time.perf_counter() - start)


def measure_plain(
    args,
    width: float,
    bf16: bool,
    channels_last: bool,
    device: torch.device,
    pool: camri_data.DataSet,
    batch: int,
    seconds: float,
) -> float:
    """Images/s of a plain loop: the same model and Adam, random batches of the in-memory uint8 tensors
    scaled to [0, 1], the same autocast and memory format, and nothing else (no metrics, no NaN check)."""
    model, optimizer = make_model(args, width, Placement(device, amp=bf16, channels_last=channels_last))
    model.train()
    x_all, y_all = pool.x_train, pool.y_train
    g = torch.Generator().manual_seed(0)

    def step():
        index = torch.randint(len(y_all), (batch,), generator=g).to(device)
        x = x_all[index].float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = model(x)
        loss = model.head(z, y_all[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_steps(step, batch, seconds, device)


def measure_conventional(
    args, width: float, bf16: bool, channels_last: bool, device: torch.device, png_dir: Path, batch: int, seconds: float
) -> float:
    """Images/s of the textbook loop: ImageFolder(PNG) + ToTensor + DataLoader, same model and step."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    model, optimizer = make_model(args, width, Placement(device, amp=bf16, channels_last=channels_last))
    dataset = datasets.ImageFolder(str(png_dir), transform=transforms.ToTensor())
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()

    def step():
        x, y = next(it)
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

    return timed_steps(step, batch, seconds, device)


# ---- a real camri train of the same shape -----------------------------------------------------------------


class RealData:
    """Image folders of random PNGs for the real runs, written once per size, and their camri cache."""

    def __init__(self, root: Path):
        self.root, self.names = root, {}

    def get(self, n_train: int, n_test: int) -> str:
        if (n_train, n_test) not in self.names:
            log(f"writing {n_train} + {n_test} PNGs for the real camri train runs")
            self.names[n_train, n_test] = real_run.write_imagefolder(
                self.root / f"set-{n_train}-{n_test}", n_train, n_test
            )
        return self.names[n_train, n_test]


def measure_real(
    args, width: float, bf16: bool, channels_last: bool, loop_rate: float, batch: int, data: RealData, notes: list[str]
) -> dict:
    """One epoch of ``camri train`` over ``--real-run-batches`` batches of ``batch`` images (fewer when
    the loop's rate predicts more than ``--real-run-max-s``); its rates, from its log."""
    if args.no_real_run:
        notes.append("no real camri train run (--no-real-run): the loop figure is unchecked")
        return {}
    batches = args.real_run_batches
    if batches * batch / loop_rate > args.real_run_max_s:
        batches = max(10, int(args.real_run_max_s * loop_rate / batch))
        notes.append(
            f"real camri train over {batches} batches (--real-run-batches {args.real_run_batches} "
            f"would take over --real-run-max-s {args.real_run_max_s:.0f} s)"
        )
    # CIFAR-10's proportions, and a few images of each of the 10 classes in each split (with one per class
    # every angle variance is 0, and camri.metrics.relative_angle_variance divides by it).
    n_train = max(50, batches * batch)
    n_test = max(50, n_train * CIFAR_TEST // CIFAR_TRAIN)
    dataset = data.get(n_train, n_test)
    out = data.root / f"run-{width}-{'bf16' if bf16 else 'fp32'}-{int(channels_last)}-{time.monotonic_ns()}"
    command = real_run.train_command(
        dataset,
        data.root / "data-dir",
        out,
        loss=args.loss,
        width=width,
        z_dim=args.z_dim,
        batch_size=batch,
        eval_batch_size=args.eval_batch_size,
        device=args.device,
        bf16=bf16,
        channels_last=channels_last,
    )
    log(f"real run: {' '.join(command[1:])}")
    result = real_run.real_run(
        command, out, torch.get_num_threads(), timeout_s=120 + 5 * (n_train + n_test) / loop_rate
    )
    result["batches"] = math.ceil(result["images"] / batch)  # what it trained on (at least 50 images)
    if args.compile:
        notes.append("--compile: camri train does not compile, so its rate is not compared with the loop's")
    return result


# ---- one configuration --------------------------------------------------------------------------------


def measure_config(
    args,
    width: float,
    dtype: str,
    channels_last: bool,
    device: torch.device,
    pool,
    png_dir: Path,
    real_data: RealData,
    flops: dict,
    peaks: dict,
    info: dict,
) -> dict:
    bf16 = dtype == "bfloat16"
    notes: list[str] = []
    load_start = loadavg()
    t0 = time.perf_counter()
    native = peaks["native_bf16"]
    seconds = args.seconds * (args.emulated_bf16_factor if bf16 and not native else 1.0)
    # Emulated bf16 runs on the float32 units: the float32 peak is its limit.
    peak_dtype = "bfloat16" if bf16 and native else "float32"
    peak = peaks[peak_dtype]
    train_flop, eval_flop = flops[width]
    loop = CamriLoop(args, width, bf16, channels_last, device)
    camri = measure_camri(loop, pool, args.batch_size, args.eval_batch_size, seconds, notes, train_flop, peak)
    del loop
    batch = camri["measured_batch_size"]  # every loop runs the batch camri's was measured on
    plain = measure_plain(args, width, bf16, channels_last, device, pool, batch, seconds)
    conventional = measure_conventional(args, width, bf16, channels_last, device, png_dir, batch, seconds)
    real = measure_real(args, width, bf16, channels_last, camri["camri_img_s"], batch, real_data, notes)
    if not bf16 and peaks.get("float32_is_tf32"):
        notes.append("float32 on CUDA: cuDNN convolutions use TF32, so the peak is the TF32 matmul rate")
    if bf16 and not native:
        notes.append("no native bf16 on this CPU: bf16 runs on emulated kernels, held to the float32 peak")
    train_s = CIFAR_TRAIN / camri["camri_img_s"]
    eval_s = CIFAR_TEST / camri["camri_eval_img_s"]
    row = {
        "width": width,
        "device": device.type,
        "dtype": dtype,
        "channels_last": channels_last,
        "camri_img_s": round(camri["camri_img_s"], 2),
        "camri_img_s_best": round(max(camri["camri_img_s_calls"]), 2),
        "camri_eval_img_s": round(camri["camri_eval_img_s"], 2),
        "plain_img_s": round(plain, 2),
        "camri_vs_plain": round(camri["camri_img_s"] / plain, 3),
        "conventional_img_s": round(conventional, 2),
        "speedup_vs_conventional": round(camri["camri_img_s"] / conventional, 3),
        "train_gflop_per_img": round(train_flop / 1e9, 4),
        "eval_gflop_per_img": round(eval_flop / 1e9, 4),
        "peak_dtype": peak_dtype,
        "native_bf16": native,
        "peak_gflop_s": round(peak / 1e9, 1),
        "fraction_of_peak": round(camri["camri_img_s"] * train_flop / peak, 4),
        "eval_fraction_of_peak": round(camri["camri_eval_img_s"] * eval_flop / peak, 4),
        "eval_share_of_epoch": round(eval_s / (train_s + eval_s), 4),
        "cifar10_epoch_s": round(train_s + eval_s, 1),
        "batch_size": args.batch_size,
        "measured_batch_size": batch,
        "eval_batch_size": args.eval_batch_size,
        "measured_eval_images": camri["measured_eval_images"],
        "train_images_timed": camri["train_images_timed"],
        "camri_img_s_calls": camri["camri_img_s_calls"],
        "compile": bool(args.compile),
        "num_workers": args.num_workers,
        "loss": args.loss,
        "z_dim": args.z_dim,
    }
    if real:
        ideal_epoch_s = (real["images"] * train_flop + real["eval_images"] * eval_flop) / peak
        row.update(
            {
                "real_img_s": real["img_s"],
                "real_eval_img_s": real["eval_img_s"],
                "real_images": real["images"],
                "real_batches": real["batches"],
                "real_epoch_s": real["epoch_s"],
                "real_vs_loop": round(real["img_s"] / camri["camri_img_s"], 3),
                "real_fraction_of_peak": round(real["img_s"] * train_flop / peak, 4),
                # The whole epoch (training, evaluation, checkpoint) against its FLOPs at the peak rate.
                "real_epoch_fraction_of_peak": round(ideal_epoch_s / real["epoch_s"], 4),
                "real_comparable": not args.compile,
            }
        )
    row.update(
        {
            "seconds": round(time.perf_counter() - t0, 1),
            "loadavg_start": load_start,
            "loadavg": loadavg(),
            **info,
            "notes": notes,
        }
    )
    row["errors"] = checks.row_errors(row)
    return row


# ---- main ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (seconds; no doc)")
    p.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=None,
        help="channel multipliers of the paper CNN (default 1.0 0.25; 1.0 0.25 0.125 on a "
        "native-bf16 CPU; 0.125 with --quick)",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=list(DTYPES),
        help="default: float32, and bfloat16 where the hardware has it (CUDA, or a CPU with "
        "native bf16: camri.train.cpu_has_bf16)",
    )
    p.add_argument(
        "--channels-last",
        nargs="+",
        default=None,
        choices=("auto", "on", "off"),
        help="memory formats to measure, resolved as camri resolves them (auto: on for CUDA and "
        "CPU); default auto, and on off on a native-bf16 CPU",
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch (64 = the paper's)")
    p.add_argument("--eval-batch-size", type=int, default=TrainConfig().eval_batch_size)
    p.add_argument("--z-dim", type=int, default=512, help="feature dimension (512 = paper; the cpu profile: 128)")
    p.add_argument("--loss", default="camri", help="head of the model (camri.losses name)")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="timed seconds per measurement (default: 9 on CPU, 5 on CUDA, 0.3 with --quick)",
    )
    p.add_argument(
        "--emulated-bf16-factor",
        type=float,
        default=0.5,
        help="scale of --seconds for bf16 on a CPU without native bf16 (it is measured anyway)",
    )
    p.add_argument(
        "--real-run-batches",
        type=int,
        default=None,
        help="batches of the real camri train run of each configuration (default 300; 4 with --quick)",
    )
    p.add_argument(
        "--real-run-max-s",
        type=float,
        default=900.0,
        help="fewer real-run batches when the loop's rate predicts more seconds than this",
    )
    p.add_argument(
        "--no-real-run",
        action="store_true",
        help="no real camri train runs: the loop figures go unchecked against them",
    )
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the conventional loop")
    p.add_argument("--pngs", type=int, default=None, help="PNG files of the conventional loop's ImageFolder")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the loops, not camri train)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--peak-sizes",
        type=int,
        nargs="+",
        default=None,
        help="square matmul sizes for the peak (default 256..2048 on CPU, 4096 8192 on CUDA)",
    )
    p.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"markdown file whose table to update (default {DOC.relative_to(ROOT)} unless --quick)",
    )
    p.add_argument(
        "--doc-label",
        default=None,
        help="the table's markers in --doc: <!-- throughput:LABEL:begin/end --> (default the device)",
    )
    p.add_argument("--no-doc", action="store_true", help="do not write the table")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's top operators of camri's training step (first width/dtype)",
    )
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        metavar="K1,K2",
        help="measure K concurrent training processes instead (first width/dtype)",
    )
    p.add_argument(
        "--members",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        metavar="K1,K2",
        help="measure K networks stacked in one model (K seeds at once; first width/dtype); "
        "vs_one_run is against K=1 when the list starts with 1",
    )
    p.add_argument("--worker-startup-s", type=float, default=20.0, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # A bf16 study where bf16 is native: float32 against bf16 at three widths, both memory formats (issue 13).
    native_cpu = args.device == "cpu" and cpu_has_bf16()
    if args.widths is None:
        args.widths = [0.125] if args.quick else ([1.0, 0.25, 0.125] if native_cpu else [1.0, 0.25])
    if args.dtypes is None:
        args.dtypes = ["float32", "bfloat16"] if args.device == "cuda" or native_cpu else ["float32"]
    if args.channels_last is None:
        args.channels_last = ["on", "off"] if native_cpu and not args.quick else ["auto"]
    if args.seconds is None:
        args.seconds = 0.3 if args.quick else (5.0 if args.device == "cuda" else 9.0)
    if args.real_run_batches is None:
        args.real_run_batches = 4 if args.quick else 300
    if args.pngs is None:
        args.pngs = 256 if args.quick else 4096
    if args.quick and args.peak_sizes is None:
        args.peak_sizes = [128, 256]
    if args.peak_sizes is None:
        args.peak_sizes = [4096, 8192] if args.device == "cuda" else [256, 512, 1024, 2048]
    for name in ("batch_size", "eval_batch_size", "z_dim", "real_run_batches", "pngs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def profile(args, device: torch.device, pool) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    b = args.batch_size
    loop = CamriLoop(
        args, args.widths[0], args.dtypes[0] == "bfloat16", resolve_channels_last(args.channels_last[0], device), device
    )
    loop.train(pool.x_train[:b], pool.y_train[:b], b)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        loop.train(pool.x_train[: 3 * b], pool.y_train[: 3 * b], b)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25), file=sys.stderr)


def measure_peaks(args, device: torch.device, info: dict) -> dict:
    """The matmul peak of float32 (always: emulated bf16 is held to it) and of each other dtype."""
    peaks = {"native_bf16": device.type == "cuda" or info["cpu_native_bf16"]}
    # On CUDA, cuDNN runs float32 convolutions on TF32 tensor cores unless torch.backends.cudnn.allow_tf32
    # is off: the float32 limit is then the TF32 matmul rate, so the peak is measured with TF32 too.
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    peaks["float32_is_tf32"] = tf32
    for dtype in dict.fromkeys(["float32", *args.dtypes]):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32 and dtype == "float32"
        try:
            peak, n = matmul_peak(device, DTYPES[dtype], args.peak_sizes, 0.3 if args.quick else 3.0)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        peaks[dtype] = peak
        log(
            f"matmul peak {dtype}{' (TF32)' if tf32 and dtype == 'float32' else ''}: {peak / 1e9:.1f} GFLOP/s "
            f"(best at {n}^3)"
        )
    return peaks


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("throughput.py: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    if args.worker:
        return scaling.worker(args)
    if args.concurrency:
        scaling.concurrency(args)
        return 0
    if args.members:
        scaling.members(args)
        return 0
    device = torch.device(args.device)
    info = machine(device)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.perf_counter()
    log(f"{info}; load average {loadavg()}")
    if loadavg() and loadavg()[0] > 0.25 * info["cores"]:
        log("warning: the machine is busy (load average above); the numbers will be low and noisy")

    peaks = measure_peaks(args, device, info)
    flops = {w: count_flops(args, w, device) for w in args.widths}
    for w, (tr, ev) in flops.items():
        log(f"width {w}: {tr / 1e9:.3f} GFLOP per training image, {ev / 1e9:.3f} per evaluated image")
    # Every memory format as camri resolves the setting, each measured once.
    layouts = list(dict.fromkeys(resolve_channels_last(s, device) for s in args.channels_last))

    n_train = 4096 if args.quick else CIFAR_TRAIN
    n_test = 1024 if args.quick else CIFAR_TEST
    pool = synthetic_dataset(n_train, n_test, device=device)  # on the device, as camri train keeps its data
    if args.profile:
        profile(args, device, pool)
    rows = []
    with tempfile.TemporaryDirectory(prefix="camri-bench-") as scratch:
        png_dir = Path(scratch) / "conventional"
        write_pngs(png_dir, args.pngs)
        real_data = RealData(Path(scratch) / "real")
        for width in args.widths:
            for dtype in args.dtypes:
                for channels_last in layouts:
                    row = measure_config(
                        args, width, dtype, channels_last, device, pool, png_dir, real_data, flops, peaks, info
                    )
                    print(json.dumps(row), flush=True)
                    real = f", real camri train {row['real_img_s']:.1f} img/s" if "real_img_s" in row else ""
                    log(
                        f"{checks.row_name(row)}: camri loop {row['camri_img_s']:.1f} img/s "
                        f"({100 * row['fraction_of_peak']:.1f}% of peak), plain {row['plain_img_s']:.1f}, "
                        f"eval {row['camri_eval_img_s']:.1f} img/s, conventional {row['conventional_img_s']:.1f}"
                        f"{real}; {row['seconds']} s"
                    )
                    for error in row["errors"]:
                        log(f"ERROR {error}")
                    rows.append(row)
    log(f"done in {time.perf_counter() - t_start:.0f} s; load average {loadavg()}")

    doc = None if args.no_doc else (args.doc or (None if args.quick else DOC))
    if doc is not None:
        command = " ".join(["benchmarks/throughput.py"] + (argv if argv is not None else sys.argv[1:]))
        report.update_doc(doc, args.doc_label or device.type, report.table_markdown(rows, command, info, started))
        log(f"wrote the table to {doc}")
    errors = [e for r in rows for e in r["errors"]]
    if errors and args.quick:
        log(f"{len(errors)} check(s) failed; --quick only reports them (its numbers are meaningless)")
    elif errors:
        log(f"{len(errors)} check(s) failed: the rows named above are not results")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
