#!/usr/bin/env bash
# The speed checks for one lent H100 (at most $BUDGET = 480 s), from the repository root:
#   1. benchmarks/speed/optimizer_step.py: the RAdam + EMA update of DiT-B/2 weights as lists of tensors,
#      flat, and flat with the compiled kernel (train.fused_optimizer);
#   2. benchmarks/speed/throughput.py: the modes in $MODES for every size in $MODELS at batch 128 then 256
#      (the deadline cuts the tail), the ilct[...] / ilct+... variants only for $VARIANT_MODELS, and a
#      torch.profiler table of 3 extra steps of each ilct row at batch 128;
#   3. `ilct train` end to end on the GPU (Fashion-MNIST latents of .gpu/builtin_ae, $SMOKE_ARCH):
#      bf16 + compile + CUDA graphs + the fused optimizer, a crash after the middle checkpoint and the
#      resume in a new process, and the same run without CUDA graphs: their logged losses compared;
#   4. the $LATE_MODES throughput rows (max-autotune compiles for minutes), into $OUT/late/.
# Needs, in the ignored folder .gpu/ (carry it): fmnist/ (the four Fashion-MNIST .gz files), builtin_ae/.
# Writes into $OUT: optimizer_step.json, throughput.log, performance.json, performance.md, profiles.tgz,
# train_check.log, late/.
# A CPU rehearsal: OUT=/tmp/gpu_out OPT_EXTRA="--device cpu --model DiT-T/2" VARIANT_MODELS=DiT-T/2 \
#   TP_EXTRA="--device cpu --models DiT-T/2 --batches 4 --steps 2 --latent 8" SMOKE_ARCH=DiT-T/4 SMOKE_STEPS=20 \
#   SMOKE_EXTRA="--set train.device=cpu --set train.batch_size=16" LATE_MODES="" bash benchmarks/device/gpu_profile.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
timeout ${OPT_S:-90} python3 benchmarks/speed/optimizer_step.py --model DiT-B/2 --out "$OUT/optimizer_step.json" ${OPT_EXTRA:-} \
  > "$OUT/optimizer_step.log" 2>&1
echo "optimizer_step exit $? after $(( $(date +%s) - start )) s"; grep '^{"way' "$OUT/optimizer_step.log" | cut -c1-200
MODES=${MODES:-reference,ilct,ilct+train.bf16_residual=true,ilct[model:reduce-overhead]+train.bf16_residual=true,ilct[model:reduce-overhead]}
timeout ${TP_S:-260} python3 benchmarks/speed/throughput.py --modes "$MODES" --models ${MODELS:-DiT-B/2} \
  --variant-models ${VARIANT_MODELS:-DiT-B/2} --profile --deadline ${ROWS_S:-190} --out "$OUT" ${TP_EXTRA:-} \
  > "$OUT/throughput.log" 2>&1
echo "throughput exit $? after $(( $(date +%s) - start )) s"
grep "^{\|deadline\|peak" "$OUT/throughput.log" | cut -c1-240
for f in "$OUT"/profile_*.txt; do head -1 "$f"; done

W=$(mktemp -d)
S=${SMOKE_STEPS:-100}
smoke() {  # run directory, then --set values
  local run=$1; shift
  timeout ${SMOKE_S:-80} python3 -m ilct train --config fmnist-ilct --autoencoder .gpu/builtin_ae --data-dir .gpu/fmnist \
    --out "$W/$run" --no-progress --set model.arch=${SMOKE_ARCH:-DiT-S/2} --set train.precision=bf16 \
    --set train.compile=true --set train.log_every=$(( S / 10 )) --set train.ckpt_every=$(( S / 2 )) \
    --set train.sample_every=$S --set data.cache_dir=$W/cache ${SMOKE_EXTRA:-} "$@" >> "$OUT/train_check.log" 2>&1
  echo "train $run $* exit $? after $(( $(date +%s) - start )) s"
}
smoke graphs --set train.total_steps=$S --set train.cuda_graphs=true
# a crash after the middle checkpoint: drop the last one, resume in a new process, train the second half again
rm -rf "$W/graphs/checkpoints/step_$(printf %09d $S)" "$W/graphs/checkpoints/latest"
smoke graphs --resume --set train.total_steps=$S --set train.cuda_graphs=true
smoke plain --set train.total_steps=$S
python3 - "$W" $S <<'PY'
import json, sys
from pathlib import Path
def losses(run):
    rows = [json.loads(l) for l in (Path(sys.argv[1]) / run / "log.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in rows if "loss" in e]
S, graphs, plain = int(sys.argv[2]), losses("graphs"), dict(losses("plain"))
first = {}
for k, v in graphs:
    first.setdefault(k, v)
resumed = dict(graphs[len(first):])  # the steps logged again after the resume
def worst(a, b):
    keys = sorted(set(a) & set(b))
    return (max(abs(a[k] - b[k]) / abs(b[k]) for k in keys), len(keys)) if keys else ("none", 0)
print("resumed steps", sorted(resumed), "final step", max(first))
print("CUDA graphs, first run vs resumed: max relative loss difference %s over %d logged steps" % worst(resumed, first))
print("CUDA graphs vs compiled blocks: max relative loss difference %s over %d logged steps" % worst(first, plain))
print("losses (step, graphs, plain):", [(k, round(first[k], 4), round(plain[k], 4)) for k in sorted(plain)])
PY
tail -3 "$OUT/train_check.log"

LATE_MODES=${LATE_MODES-ilct[blocks:max-autotune-no-cudagraphs]}
if [ -n "$LATE_MODES" ]; then
  left=$(( ${BUDGET:-480} - ($(date +%s) - start) ))
  echo "late rows: $left s left"
  timeout $(( left > 30 ? left - 20 : 10 )) python3 benchmarks/speed/throughput.py --modes "$LATE_MODES" --models DiT-B/2 \
    --batches 128 --no-sampling --out "$OUT/late" ${TP_EXTRA:-} > "$OUT/late.log" 2>&1
  echo "late exit $?"; grep "^{" "$OUT/late.log" | cut -c1-240
fi
cd "$OUT" && if ls profile_*.txt >/dev/null 2>&1; then tar czf profiles.tgz profile_*.txt && rm -f profile_*.txt; fi
