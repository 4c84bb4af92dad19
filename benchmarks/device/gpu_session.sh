#!/usr/bin/env bash
# One lent-GPU session (about 9 minutes on one H100), run from the repository root:
#   1. benchmarks/speed/throughput.py: reference vs ilct training throughput, DiT-B/2 first;
#   2. benchmarks/quality/ablation.py --budget gpu: both latent spaces, all 18 runs training at once,
#      each row given the steps that fit in the time left, then FID/recall and FID-versus-step.
# Needs, in the ignored folder .gpu/: fmnist/ (the four Fashion-MNIST .gz files), taef2/ (the
# TAEF2 weights), builtin_ae/ (a built-in autoencoder directory), cache/fmnist_classifier/.
# Writes into $OUT (default gpu_out): performance.*, ablation_*.json, two logs and runs.tgz (7 files).
# TP_EXTRA / AB_EXTRA append arguments to the two benchmarks (a CPU rehearsal uses tiny ones).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-540}  # seconds for the whole script
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 ILCT_CACHE=$PWD/.gpu/cache
mkdir -p /usr/share/datasets/fashion-mnist && cp -n .gpu/fmnist/*.gz /usr/share/datasets/fashion-mnist/
W=${WORK:-/tmp/abl}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" 2>&1

if [ "${THROUGHPUT_S:-230}" != 0 ]; then
  timeout ${THROUGHPUT_S:-230} python3 benchmarks/speed/throughput.py --deadline ${THROUGHPUT_ROWS_S:-150} --out "$OUT" \
    ${TP_EXTRA:-} > "$OUT/throughput.log" 2>&1
  echo "throughput done after $(( $(date +%s) - start )) s (exit $?)"; cat "$OUT/performance.md" 2>/dev/null
fi

# CUDA MPS lets the kernels of the 18 small training processes run side by side instead of
# time-slicing the GPU; if it does not start or a CUDA call fails under it, go on without.
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; assert (torch.ones(4, device='cuda') * 2).sum().item() == 8"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control; sleep 1; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS off"
  fi
fi

left=$(( BUDGET - ($(date +%s) - start) ))
train_s=$(( left - ${RESERVE_S:-150} ))  # encoding ~35 s, timing run ~30 s, evaluation ~70 s, archive
echo "ablation: $left s left, $train_s s of training"
OMP_NUM_THREADS=2 timeout $(( left - 15 )) python3 benchmarks/quality/ablation.py --latents builtin,taef2 \
  --autoencoder .gpu/builtin_ae,.gpu/taef2 --budget gpu --train-seconds $train_s --probe ${PROBE:-100} --parallel 18 \
  --work $W --out $W/out --train-deadline $(( left - 100 )) --eval-deadline $(( left - 45 )) ${AB_EXTRA:-} > "$OUT/ablation.log" 2>&1
echo "ablation done after $(( $(date +%s) - start )) s"; tail -25 "$OUT/ablation.log"
cp $W/out/ablation_*.json "$OUT/" 2>/dev/null  # at most 8 files come back: the rest goes into runs.tgz
cd $W && tar czf "$OUT/runs.tgz" --exclude='*.safetensors' --exclude='shard_*' --exclude='labels_*' \
  --exclude='checkpoints' out builtin/runs taef2/runs builtin/eval taef2/eval logs 2>/dev/null
ls -la "$OUT"
