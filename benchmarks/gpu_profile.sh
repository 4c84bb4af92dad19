#!/usr/bin/env bash
# The throughput table on one lent H100 (about 9 minutes), from the repository root:
# benchmarks/throughput.py, reference vs ilct for every size at batch 128 then 256 (the deadline cuts
# the tail), the ilct step also with whole-model CUDA graphs (torch.compile mode reduce-overhead) for
# $VARIANT_MODELS, and a torch.profiler table of 3 extra steps of each ilct row at batch 128.
# Writes into $OUT: throughput.log, performance.json, performance.md, profiles.tgz.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
timeout ${TP_S:-530} python3 benchmarks/throughput.py --modes "${MODES:-reference,ilct,ilct[model:reduce-overhead]}" \
  --variant-models ${VARIANT_MODELS:-DiT-B/2,DiT-S/2} --profile --deadline ${ROWS_S:-420} --out "$OUT" ${TP_EXTRA:-} \
  > "$OUT/throughput.log" 2>&1
echo "exit $?"
grep "^{\|deadline\|peak" "$OUT/throughput.log" | cut -c1-240
for f in "$OUT"/profile_*.txt; do head -1 "$f"; done
cd "$OUT" && tar czf profiles.tgz profile_*.txt && rm -f profile_*.txt
