"""The scaling modes of benchmarks/throughput.py: ``--concurrency`` (K training processes at once) and
``--members`` (K networks stacked in one model). Each prints one JSON line per K."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from camri import data as camri_data
from camri.losses import build_loss
from camri.models import PaperCNN
from camri.train import resolve_channels_last
from harness import CamriLoop, cpu_model, loadavg, log, sync, synthetic_dataset, time_calls

THROUGHPUT = Path(__file__).with_name("throughput.py")


def worker(args) -> int:
    """One process of --concurrency: a time-boxed camri training loop; prints one JSON line."""
    device = torch.device(args.device)
    b = args.batch_size
    pool = synthetic_dataset(max(4096, b), 64, device=device)
    loop = CamriLoop(
        args, args.widths[0], args.dtypes[0] == "bfloat16", resolve_channels_last(args.channels_last[0], device), device
    )
    loop.train(pool.x_train[:b], pool.y_train[:b], b)  # warm-up
    n = max(1, min(len(pool.y_train) // b, 8)) * b
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    begin = time.time()
    total, _, results = time_calls(lambda: loop.train(pool.x_train[:n], pool.y_train[:n], b), args.seconds)
    print(
        json.dumps(
            {
                "img_s": sum(r.images for r in results) / total,
                "begin": begin,
                "end": time.time(),
                "threads": torch.get_num_threads(),
            }
        ),
        flush=True,
    )
    return 0


def concurrency(args) -> list[dict]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for k in args.concurrency:
        threads = args.threads or max(1, cores // k)
        command = [
            sys.executable,
            str(THROUGHPUT),
            "--worker",
            "--device",
            args.device,
            "--widths",
            str(args.widths[0]),
            "--dtypes",
            args.dtypes[0],
            "--batch-size",
            str(args.batch_size),
            "--seconds",
            str(args.seconds),
            "--threads",
            str(threads),
            "--loss",
            args.loss,
            "--channels-last",
            args.channels_last[0],
            "--start-at",
            str(time.time() + args.worker_startup_s),
        ]
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
        row = {
            "kind": "concurrency",
            "processes": k,
            "threads_per_process": threads,
            "width": args.widths[0],
            "device": args.device,
            "dtype": args.dtypes[0],
            "batch_size": args.batch_size,
            "aggregate_img_s": round(sum(r["img_s"] for r in results), 2),
            "per_process_img_s": [round(r["img_s"], 2) for r in results],
            "overlap_fraction": round(max(0.0, overlap) / span, 3) if span > 0 else 1.0,
            "loadavg_start": load_start,
            "loadavg": loadavg(),
            "cpu": cpu_model(),
            "cores": cores,
            "torch": torch.__version__,
        }
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
    channels_last = resolve_channels_last(args.channels_last[0], device)
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
        total, times, _ = time_calls(lambda: (step(), sync(device)), args.seconds, min_calls=3)
        img_s = k * b * len(times) / total
        if k == 1:
            base = img_s
        row = {
            "kind": "members",
            "members": k,
            "width": width,
            "device": device.type,
            "dtype": args.dtypes[0],
            "batch_size_per_member": b,
            "channels_last": channels_last,
            "threads": torch.get_num_threads(),
            "aggregate_img_s": round(img_s, 2),
            "img_s_per_member": round(img_s / k, 2),
            "vs_one_run": round(img_s / base, 3) if base else None,
            "steps": len(times),
            "loadavg_start": load_start,
            "loadavg": loadavg(),
            "cpu": cpu_model(),
            "torch": torch.__version__,
        }
        print(json.dumps(row), flush=True)
        log(f"{k} member(s): {img_s:.1f} img/s in total, {img_s / k:.1f} per member")
        rows.append(row)
    return rows
