"""The markdown table of benchmarks/throughput.py and its place in docs/performance.md."""

from __future__ import annotations

from pathlib import Path

import checks


def _layout(row: dict) -> str:
    return "channels_last" if row["channels_last"] else "NCHW"


def _real(row: dict) -> str:
    if "real_img_s" not in row:
        return "—"
    return f"{row['real_img_s']:.1f} ({row['real_vs_loop']:.2f}x)"


def _real_epoch(row: dict) -> str:
    if "real_epoch_s" not in row:
        return "—"
    return (
        f"{duration(row['real_epoch_s'])} / {row['real_batches']} batches, "
        f"{100 * row['real_epoch_fraction_of_peak']:.1f}%"
    )


def table_markdown(rows: list[dict], command: str, info: dict, started: str) -> str:
    """The table of the accepted rows, the rejected ones with their errors, the notes, the targets and
    (where both dtypes ran on native bf16) the bf16 speed-ups."""
    device = rows[0]["device"]
    what = info.get("gpu") if device == "cuda" else info["cpu"]
    accepted = [r for r in rows if not r["errors"]]
    rejected = [r for r in rows if r["errors"]]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {what}, {info['cores']} cores, {info['threads']} torch threads, torch {info['torch']} "
        f"(CPU capability {info['cpu_capability']}, native CPU bf16: {info['cpu_native_bf16']}); "
        f"run {started}.",
        "",
        "| width | dtype | memory format | camri loop img/s (best call) | % of peak | plain loop img/s (camri/plain) "
        "| conventional img/s (camri/conv.) | real `camri train` img/s (real/loop) "
        "| real epoch: time / batches, % of peak "
        "| eval img/s | eval share of epoch | train GFLOP/img | peak GFLOP/s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in accepted:
        batch = "" if r["measured_batch_size"] == r["batch_size"] else f" (batch {r['measured_batch_size']})"
        lines.append(
            f"| {r['width']} | {r['dtype']} | {_layout(r)} "
            f"| {r['camri_img_s']:.1f} ({r['camri_img_s_best']:.1f}){batch} | "
            f"{100 * r['fraction_of_peak']:.1f}% | {r['plain_img_s']:.1f} ({r['camri_vs_plain']:.2f}x) | "
            f"{r['conventional_img_s']:.1f} ({r['speedup_vs_conventional']:.2f}x) | {_real(r)} | {_real_epoch(r)} | "
            f"{r['camri_eval_img_s']:.1f} | {100 * r['eval_share_of_epoch']:.1f}% | {r['train_gflop_per_img']:.3f} | "
            f"{r['peak_gflop_s']:.1f} {r['peak_dtype']} | "
            f"{r['loadavg_start'][0] if r['loadavg_start'] else '?'}-{r['loadavg'][0] if r['loadavg'] else '?'} |"
        )
    if not accepted:
        lines.append("| (no row passed the checks) |" + " |" * 13)
    if rejected:
        lines += ["", "Rejected (a physical limit or the real-run agreement failed; not results):"]
        lines += [f"- {error}" for r in rejected for error in r["errors"]]
    notes = [f"- {checks.row_name(r)}: {n}" for r in rows for n in r["notes"]]
    if notes:
        lines += ["", "Notes:"] + notes
    goals = checks.targets(accepted)
    if goals:
        lines += ["", "Targets (issue 13):"] + [f"- {g}" for g in goals]
    speedups = checks.bf16_speedups(accepted)
    if speedups:
        lines += [
            "",
            "bf16 autocast / float32, camri loop img/s (native bf16): "
            + ", ".join(f"width {w} {layout}: {ratio:.2f}x" for w, layout, ratio in speedups),
        ]
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def update_doc(path: Path, label: str, body: str) -> None:
    """Replace the text between this label's markers in ``path`` (append a section if they are absent)."""
    begin, end = f"<!-- throughput:{label}:begin -->", f"<!-- throughput:{label}:end -->"
    text = path.read_text() if path.exists() else "# Performance\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Latest benchmark table ({label})\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
