#!/usr/bin/env bash
# Every GPU measurement of the README's performance section in one go (about 10 minutes on an H100/H200).
#
#   bash benchmarks/gpu_session.sh --prepare              # here, with PyPI: wheels the GPU image lacks -> .gpu_wheels/
#   OUT=/results bash benchmarks/gpu_session.sh           # on the GPU machine, from the repository root
#   OUT=/tmp/dry bash benchmarks/gpu_session.sh --device cpu   # dry run: ccsr-tiny at tiny sizes, same commands
#
# The GPU image holds torch, transformers and accelerate but not diffusers: --prepare downloads its wheel
# (and importlib_metadata) into .gpu_wheels/, which git ignores (.gitignore) and which must travel
# with the repository (the device tool's `carry: [".gpu_wheels"]`). Without the folder, pip asks PyPI.
#
# Each measurement is one `ccsr bench` run; its JSON becomes one line of $OUT/results.jsonl the moment it
# ends (so a run cut short keeps what finished), its text goes to $OUT/log.txt. Runs go from the most to the
# least important, each under its own time limit, and none starts after $BUDGET seconds (default 480).
# Levers are measured one at a time against the eager bf16 baseline: channels_last, SDPA backend,
# torch.compile, torch.compile with CUDA graphs (mode reduce-overhead); then the folder run (64 images
# 128 -> 512, bare loop vs `ccsr upscale`) and 512 -> 2048 tiled with peak memory.
set -uo pipefail

DEVICE=cuda
MODE=run
for arg in "$@"; do
  case "$arg" in
    --prepare) MODE=prepare ;;
    --device) ;;
    cpu|cuda) DEVICE=$arg ;;
    *) echo "usage: $0 [--prepare] [--device cpu|cuda]" >&2; exit 2 ;;
  esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$REPO/.gpu_wheels
PY=${PYTHON:-python3}

if [ "$MODE" = prepare ]; then
  mkdir -p "$WHEELS"
  DIFFUSERS=$($PY -c "from importlib.metadata import version; print(version('diffusers'))" 2>/dev/null || echo 0.42.1)
  $PY -m pip download --no-deps -d "$WHEELS" "diffusers==$DIFFUSERS" importlib_metadata
  ls -l "$WHEELS"
  exit 0
fi

OUT=${OUT:?set OUT to the folder for the results}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
LOG=$OUT/log.txt
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/ccsr-inductor}  # compiled graphs shared by runs
cd "$REPO"

if ! $PY -c "import torch" >>"$LOG" 2>&1; then
  echo "$PY has no torch (see $LOG): run with PYTHON set to the interpreter that has it" | tee -a "$LOG" >&2
  exit 1
fi
if ! $PY -c "import diffusers" 2>/dev/null; then
  if [ -d "$WHEELS" ]; then
    $PY -m pip install --no-index --no-deps --find-links "$WHEELS" diffusers importlib_metadata >>"$LOG" 2>&1
  else
    $PY -m pip install diffusers >>"$LOG" 2>&1
  fi
fi
if ! $PY -c "import torch, diffusers, transformers, accelerate" >>"$LOG" 2>&1; then
  echo "$PY cannot import torch, diffusers, transformers and accelerate (see $LOG); set PYTHON" | tee -a "$LOG" >&2
  exit 1
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
  git -C "$REPO" log -1 --oneline 2>/dev/null
} >>"$LOG" 2>&1

# The model: the full-size architecture with random weights, written once and loaded by every run.
if [ "$DEVICE" = cuda ]; then
  MODEL=/tmp/ccsr-full-size
  if [ ! -f $MODEL/unet/config.json ]; then
    $PY - >>"$LOG" 2>&1 <<EOF
import time, torch
from ccsr.bench.full_size import build_full_size_pipeline
t = time.time()
pipe = build_full_size_pipeline("$MODEL-tokenizer", torch_dtype=torch.float16)
pipe.save_pretrained("$MODEL")
print(f"full-size model written to $MODEL in {time.time() - t:.1f} s")
EOF
  fi
  S1="--size 128 512"; BIG="--size 512 2048 --tile-batch 4"; N=64; R=10; RC=5; W=3
else  # dry run: the same commands on ccsr-tiny at sizes a CPU does in seconds
  MODEL=tiny
  S1="--size 16 64"; BIG="--size 64 256 --tiling on --tile-size 64 --tile-stride 32 --tile-batch 4"; N=3; R=1; RC=1; W=1
fi

bench() {  # bench NAME SECONDS ARGS...: one `ccsr bench` run, its JSON appended to results.jsonl
  local name=$1 limit=$2; shift 2
  if [ "$SECONDS" -ge "$BUDGET" ]; then echo "== $name: skipped (budget of $BUDGET s spent)" >>"$LOG"; return; fi
  echo "== $name ($SECONDS s): ccsr bench --model $MODEL --device $DEVICE $*" >>"$LOG"
  local json=/tmp/ccsr-bench-$name.json
  timeout "$limit" $PY -m ccsr bench --model "$MODEL" --device "$DEVICE" --json "$@" >"$json" 2>>"$LOG"
  local rc=$?
  $PY - "$name" "$rc" "$json" "$*" >>"$RESULTS" 2>>"$LOG" <<'EOF'
import json, sys
name, rc, path, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    rec = json.load(open(path))
except ValueError:
    rec = {}
print(json.dumps({"name": name, "rc": rc, "args": args, **rec}))
for run in rec.get("runs", []):
    print(f"{name}: steps {run['steps']}: {run['per_image_s']['median'] * 1e3:.1f} ms/image, "
          f"call {run['call_s']['median'] * 1e3:.1f} ms; {run['verdict']}", file=sys.stderr)
EOF
  echo "== $name: exit $rc at $SECONDS s" >>"$LOG"
}

# Most important first: compiling takes minutes, so the lever runs that compile come after the cheap ones
# they are compared with, and S2 compiled (another batch size, another compile) comes last.
CL="--channels-last --compile"
LAT="--precision bf16 --repeats $R --images 0"
bench eager-bf16 150 $S1 --steps 1 2 $LAT                                   # baseline, with FLOP counts
bench cudagraphs-bf16-s1 300 $S1 --steps 1 $LAT --warmup $W $CL --compile-mode reduce-overhead --no-flops
bench folder-bf16 240 $S1 --steps 1 --precision bf16 --repeats $RC --images $N --compare-upscale --no-flops
bench tiled-2048-bf16 240 $BIG --steps 1 --precision bf16 --repeats 2 --images 0 --no-flops
bench channels-last-bf16 120 $S1 --steps 1 2 $LAT --channels-last --no-flops
bench sdpa-cudnn-bf16 120 $S1 --steps 1 $LAT --sdpa cudnn --no-flops
bench sdpa-flash-bf16 120 $S1 --steps 1 $LAT --sdpa flash --no-flops
bench eager-fp16 120 $S1 --steps 1 --precision fp16 --repeats $R --images 0 --no-flops
bench compile-bf16-s1 300 $S1 --steps 1 $LAT --warmup $W $CL --no-flops
bench cudagraphs-bf16-s2 300 $S1 --steps 2 $LAT --warmup $W $CL --compile-mode reduce-overhead --no-flops
# (ccsr upscale has no --compile-mode: in this comparison it compiles in torch's default mode)
bench folder-cudagraphs-bf16 300 $S1 --steps 1 --precision bf16 --repeats $RC --images $N --warmup $W $CL \
  --compile-mode reduce-overhead --compare-upscale --no-flops
echo "done at $SECONDS s" >>"$LOG"
