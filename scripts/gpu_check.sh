#!/usr/bin/env bash
# GPU readiness in one run (< 8 min on one H200): the GPU tests, then the headline benchmarks, into one table.
#   bash scripts/gpu_check.sh [OUT_DIR]        (OUT_DIR default: $OUT or reports/gpu)
# Every part has its own time limit (470 s in all, set-up excluded) and a failing part does not stop the others; the table says what ran.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
out="${1:-${OUT:-reports/gpu}}"; mkdir -p "$out"
table="$out/gpu_check.md"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$out/gpu.txt"
echo "# GPU check ($(date -u +%F' '%H:%M) UTC, $(head -1 "$out/gpu.txt"))" > "$table"
run() {  # name, limit_s, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s); timeout "$limit" "$@" > "$out/$name.log" 2>&1; local rc=$?
  echo "" >> "$table"; echo "## $name (rc=$rc, $(( $(date +%s) - t0 )) s): \`$*\`" >> "$table"
  echo '```' >> "$table"; tail -n 25 "$out/$name.log" >> "$table"; echo '```' >> "$table"
}
run gpu_tests 120 python -m pytest tests -m gpu -q -rs -p no:cacheprovider
run var_d16_ref_vs_fast 100 python benchmarks/bench_sampler.py --depth 16 --batch-sizes 64 --repeats 2
run vpg_latency_d16 100 python benchmarks/bench_vpg.py --depth 16 --batch-size 64
run mvp_vs_prefilled_memory 60 python benchmarks/bench_tuning.py --depth 16 --batch-size 16 --steps 3 --methods mvp prefilled
[ -f benchmarks/bench_backbones.py ] && run backbones_latency 90 python benchmarks/bench_backbones.py --size large
cat "$table"
