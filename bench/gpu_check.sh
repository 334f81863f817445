#!/usr/bin/env bash
# The project's GPU check, for a machine with a CUDA GPU and torch installed (no network needed), in about 8 minutes:
# builds pe_ext against the torch found there, runs the whole test suite (CUDA tests included), runs the CUDA tests
# under compute-sanitizer (memcheck), and runs the GPU benchmark. Logs and results go into the folder given.
#
#   bench/gpu_check.sh OUTDIR          # PYTHON=... to choose the interpreter (default python3)
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PE_EXT_FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1

status=0
summary="$out/summary.txt"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } >"$summary" 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log, record the outcome
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$summary"
  [ "$rc" -eq 0 ] || status=1
}

# Time limits add up to 8 minutes. The benchmark writes what it measured when its limit stops it.
step build 150 $PY setup.py build_ext --inplace
step tests 120 $PY -m pytest -q -p no:cacheprovider tests
step bench 120 $PY bench/bench_sinusoidal.py --device cuda --seconds 0.15 --results "$out/bench"
step sanitizer 90 compute-sanitizer --tool memcheck --error-exitcode 1 \
  $PY -m pytest -q -p no:cacheprovider -m cuda tests
tail -n 3 "$out/tests.log" "$out/sanitizer.log" >>"$summary" 2>&1
exit $status
