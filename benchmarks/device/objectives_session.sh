#!/usr/bin/env bash
# Issue #37, part 1, on one lent GPU (about 9.5 minutes on one H200), run from the repository root:
# benchmarks/quality/objectives.py with iCT, the paper's method (ilct), MeanFlow and MeanFlow + Cauchy + OT at the
# demo's budget (the fmnist presets' 3,000 steps, pinned) in the built-in and TAEF2 latent spaces, seeds 0 and 1,
# and each objective at 4x that budget (seed 0), all 20 training runs at once under CUDA MPS; MeanFlow also at the
# consistency rows' wall-clock (--equal-wall-clock); then FID and recall on the test split at 1 and 2 NFE, and each
# space's autoencoder floor. A training still running at the deadline is stopped (checkpoint, exit 0) and its row
# records the steps it reached; the 4x runs train at nice 19, and one that cannot finish by the deadline is
# stopped once the demo-budget runs are done (objectives.py's Controller).
# Needs, in the ignored folder .gpu/: fmnist/ (the four Fashion-MNIST .gz files), taef2/ (the TAEF2 weights),
# builtin_ae/ (a built-in autoencoder: `ilct autoencoder --out .gpu/builtin_ae`, the demo's 1,000 steps), and
# optionally src/ (a copy of src/ilct from one commit: `git archive HEAD src | tar -x -C .gpu`, named by
# .gpu/src.commit), which then runs instead of the working tree's src/.
# Writes into $OUT (default gpu_out): objectives.json (rewritten after every evaluation), the figure,
# objectives.log and runs.tgz (the runs' configs, logs and evaluations; no checkpoints).
# BUDGET: seconds for the whole script; OBJ_EXTRA appends arguments (a CPU rehearsal: "--tiny --limit 300"),
# PARALLEL / EVAL_PARALLEL the jobs at once, MPS=0 runs without CUDA MPS, PYTHON the interpreter (default python3).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-560}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
start=$(date +%s)
SRC=$PWD/src
CODE="working tree $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -d .gpu/src/ilct ]; then SRC=$PWD/.gpu/src; CODE="src of commit $(cat .gpu/src.commit 2>/dev/null || echo '?')"; fi
export PYTHONPATH=$SRC PYTHONUNBUFFERED=1 ILCT_CACHE=$PWD/.gpu/cache OMP_NUM_THREADS=1
DATA=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
mkdir -p "$DATA" && cp -n .gpu/fmnist/*.gz "$DATA/"
W=${WORK:-/tmp/objectives}
PY=${PYTHON:-python3}
echo "code: $CODE ($SRC)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" 2>&1

# CUDA MPS lets the kernels of the 20 small training processes run side by side instead of
# time-slicing the GPU; if it does not start or a CUDA call fails under it, go on without.
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d && timeout 60 $PY -c "import torch; assert (torch.ones(4, device='cuda') * 2).sum().item() == 8"; then
    echo "MPS on"
  else
    echo quit | nvidia-cuda-mps-control; sleep 1; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS off"
  fi
fi
if command -v nvidia-smi >/dev/null; then  # the GPU's load once a minute, into the log
  (while sleep 60; do echo "gpu: $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1)"; done) &
  smi=$!
fi

left=$(( BUDGET - ($(date +%s) - start) ))
train_s=$(( left - ${RESERVE_S:-110} ))  # evaluation (38 jobs, 16 at once) ~75 s, archive
echo "objectives: $left s left, trainings stopped after $train_s s"
timeout $(( left - 10 )) $PY benchmarks/quality/objectives.py --latents builtin,taef2 \
  --autoencoder .gpu/builtin_ae,.gpu/taef2 --data-dir "$DATA" --rows ict,ilct,meanflow,meanflow+cauchy+ot --seeds 0,1 \
  --multiples 1,4 --equal-wall-clock --floor --n ${N:-5000} --parallel ${PARALLEL:-20} --eval-parallel ${EVAL_PARALLEL:-16} --extra-nice 19 \
  --train-deadline $train_s --eval-deadline $(( left - 40 )) --work $W --note "code: $CODE" \
  --out "$OUT/objectives.json" --figure "$OUT/objectives_fid_vs_seconds.png" ${OBJ_EXTRA:-} > "$OUT/objectives.log" 2>&1
rc=$?
echo "objectives done after $(( $(date +%s) - start )) s (exit $rc)"; tail -40 "$OUT/objectives.log"
[ -n "${smi:-}" ] && kill $smi 2>/dev/null
cd $W 2>/dev/null && tar czf "$OUT/runs.tgz" --exclude='checkpoints' --exclude='latents' --exclude='*.safetensors' --exclude='samples' \
  builtin taef2 logs 2>/dev/null
ls -la "$OUT"
