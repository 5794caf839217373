"""The benchmark's checks of its own numbers (issue 13), as pure functions of its rows.

A row (one JSON line of benchmarks/throughput.py) that breaks a physical limit, or disagrees with a real
``camri train`` of the same shape, is an error, not a result: ``row_errors`` names what is wrong, and
throughput.py then leaves the row out of the table, lists it under "Rejected" and exits non-zero. The
issue's targets are goals, not limits: ``targets`` reports each as met or not.
"""

from __future__ import annotations

import math

AGREEMENT = 0.20  # the loop's img/s and a real camri train's must agree within 20% (issue 13)
RATE_KEYS = (  # (row key, what it is), each checked against the row's peak
    ("camri_img_s", "camri's training loop"),
    ("plain_img_s", "the plain training loop"),
    ("conventional_img_s", "the conventional DataLoader loop"),
    ("real_img_s", "the real camri train run"),
)


def row_name(row: dict) -> str:
    """How messages name a row: width, dtype and memory format, as the table's first columns."""
    layout = "channels_last" if row.get("channels_last") else "NCHW"
    return f"width {row['width']} {row['dtype']} {layout}"


def row_errors(row: dict, agreement: float = AGREEMENT) -> list[str]:
    """What makes ``row`` impossible or inconsistent; [] for a row that may be published.

    - a training rate whose FLOPs exceed the peak (img/s × training FLOP/img > peak FLOP/s) is impossible:
      the peak is the best dense matmul rate measured in the same run (``peak_gflop_s``), and no
      convolution runs faster than a matmul on the same units;
    - the same for evaluation (forward FLOPs only);
    - evaluation slower per image than training is impossible: it runs the forward pass only, a third of a
      training step's work, on larger batches;
    - the loop's training rate and the real camri train run's (``real_img_s``, from that run's own log) must
      agree within ``agreement``.
    """
    name, errors = row_name(row), []
    peak = row["peak_gflop_s"] * 1e9
    for key, what in RATE_KEYS:
        rate = row.get(key)
        if rate is None:
            continue
        fraction = rate * row["train_gflop_per_img"] * 1e9 / peak
        if not math.isfinite(fraction) or fraction > 1.0:
            errors.append(
                f"{name}: {what} at {rate:.1f} img/s is {100 * fraction:.0f}% of the measured "
                f"{row['peak_dtype']} peak ({row['peak_gflop_s']:.1f} GFLOP/s): above the physical limit"
            )
    eval_rate = row.get("camri_eval_img_s")
    if eval_rate is not None:
        fraction = eval_rate * row["eval_gflop_per_img"] * 1e9 / peak
        if not math.isfinite(fraction) or fraction > 1.0:
            errors.append(
                f"{name}: evaluation at {eval_rate:.1f} img/s is {100 * fraction:.0f}% of the measured "
                f"{row['peak_dtype']} peak ({row['peak_gflop_s']:.1f} GFLOP/s): above the physical limit"
            )
        if eval_rate < row["camri_img_s"]:
            errors.append(
                f"{name}: evaluation ({eval_rate:.1f} img/s) is slower per image than training "
                f"({row['camri_img_s']:.1f} img/s), though it is the forward pass alone"
            )
    real = row.get("real_img_s")
    if real is not None and row.get("real_comparable", True):
        ratio = real / row["camri_img_s"]
        if not abs(ratio - 1) <= agreement:
            errors.append(
                f"{name}: the loop's {row['camri_img_s']:.1f} img/s and the real camri train's "
                f"{real:.1f} img/s (its log) differ by {100 * (ratio - 1):+.0f}%, more than "
                f"{100 * agreement:.0f}%"
            )
    return errors


def _find(rows, **keys):
    return [r for r in rows if all(r.get(k) == v for k, v in keys.items())]


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets as lines "met/NOT met: what (value)"; a target without the rows it needs is
    left out. ``rows`` are the accepted ones."""
    lines = []

    def add(ok: bool, text: str):
        lines.append(f"{'met' if ok else 'NOT met'}: {text}")

    for r in rows:
        name = row_name(r)
        if r["width"] == 1.0 and r["dtype"] == "float32":
            share = f"{100 * r['fraction_of_peak']:.1f}%"
            add(r["fraction_of_peak"] >= 0.60, f"{name} >= 60% of the float32 peak ({share})")
        if r["width"] == 1.0 and r["dtype"] == "bfloat16" and r.get("native_bf16"):
            add(r["fraction_of_peak"] >= 0.40, f"{name} >= 40% of the bf16 peak ({100 * r['fraction_of_peak']:.1f}%)")
        if r.get("plain_img_s"):
            ratio = r["camri_img_s"] / r["plain_img_s"]
            add(ratio >= 0.90, f"{name}: camri's loop within 10% of a plain loop ({ratio:.2f}x)")
        add(
            r["eval_share_of_epoch"] <= 0.15,
            f"{name}: evaluation <= 15% of an epoch ({100 * r['eval_share_of_epoch']:.1f}%)",
        )
        if r.get("real_img_s") is not None and r.get("real_comparable", True):
            ratio = r["real_img_s"] / r["camri_img_s"]
            add(abs(ratio - 1) <= AGREEMENT, f"{name}: loop within 20% of the real run ({ratio:.2f}x)")
    for width, layout, ratio in bf16_speedups(rows):
        if width == 1.0:
            add(ratio >= 1.5, f"width 1.0 {layout}: bf16 >= 1.5x float32 on native bf16 ({ratio:.2f}x)")
    return lines


def bf16_speedups(rows: list[dict]) -> list[tuple[float, str, float]]:
    """(width, memory format, bf16 img/s / float32 img/s) for every width and format measured in both
    dtypes on hardware with native bf16 (emulated bf16 is no configuration to choose)."""
    out = []
    for r in _find(rows, dtype="bfloat16", native_bf16=True):
        for f in _find(rows, dtype="float32", width=r["width"], channels_last=r["channels_last"]):
            out.append(
                (
                    r["width"],
                    "channels_last" if r["channels_last"] else "NCHW",
                    round(r["camri_img_s"] / f["camri_img_s"], 3),
                )
            )
    return out
