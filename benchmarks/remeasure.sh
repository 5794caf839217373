#!/usr/bin/env bash
# Re-measure docs/performance.md's CPU tables with the self-checking benchmark, in one command (issue 13):
#
#   benchmarks/remeasure.sh                      # on an idle machine: about 16 minutes on 2 cores
#   OUT=/tmp/m DOC=/tmp/m/perf.md benchmarks/remeasure.sh --seconds 0.5 --real-run-batches 8   # a dry run
#
# 1. CIFAR-10-shaped inputs at widths 1.0 and 0.25 (the paper's z 512, CAMRI head): camri's loop, a plain
#    loop, the conventional DataLoader loop, and a real `camri train` over 300 batches of 64 per row;
#    table between the <!-- throughput:cpu:begin/end --> markers of $DOC.
# 2. The cpu profile's shape (camri/profiles/cpu.yaml: width 0.125, z 128, CE): the same, with the real
#    `camri train` over a full CIFAR-10 epoch (782 batches of 64); markers throughput:cpu-profile.
# Each table states the machine and the peak measured in the same run; every real epoch is reported as
# time and as a fraction of that peak. A row that breaks a physical limit or disagrees with its real run
# by more than 20% is rejected (listed, not tabled) and the script exits non-zero.
# Extra arguments go to both benchmark calls. JSON lines and logs: $OUT (default results/remeasure-<date>).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DOC=${DOC:-docs/performance.md}
OUT=${OUT:-results/remeasure-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
{ echo "# $(date -Is) $(uname -n)"; uptime; grep -m1 "model name" /proc/cpuinfo || true;
  grep -m1 -o -w -E "avx512_bf16|amx_bf16" /proc/cpuinfo || echo "no avx512_bf16/amx_bf16"; } | tee "$OUT/machine.txt"
status=0
"$PY" benchmarks/throughput.py --widths 1.0 0.25 --doc "$DOC" --doc-label cpu "$@" \
    > "$OUT/cifar10-shaped.jsonl" 2> >(tee "$OUT/cifar10-shaped.log" >&2) || status=$?
"$PY" benchmarks/throughput.py --widths 0.125 --z-dim 128 --loss ce --real-run-batches 782 --doc "$DOC" \
    --doc-label cpu-profile "$@" > "$OUT/cpu-profile.jsonl" 2> >(tee "$OUT/cpu-profile.log" >&2) || status=$?
echo "tables in $DOC (throughput:cpu, throughput:cpu-profile); JSON lines and logs in $OUT; exit $status"
exit $status
