#!/usr/bin/env bash
# The project's GPU check: everything that needs a GPU, in one call that ends well inside 9 minutes on a machine with
# a CUDA GPU and torch installed (no network needed). Each step has its own time limit; a step cut by its limit is
# recorded as such and the next one runs, and the summary is written whatever happens.
#
#   step            limit  what
#   build            150 s  pe_ext against the torch found there, for this GPU's architecture, with the test-only ops
#   tests_cuda        90 s  every test marked `cuda`, sinusoidal and rotary (CUDA kernels, dropout masks, opcheck, CUDA
#                           graphs, layouts built on the device, side streams, a second device where present)
#   smoke_cpu         20 s  a short CPU run (registry, parity on the CPU kernels)
#   bench_targets     60 s  the sinusoidal benchmark's shapes behind the GPU targets (decode, batch 1, 256 MiB)
#   bench_rotary      35 s  the rotary benchmark's target shapes, eager providers only (no torch.compile warm-up)
#   bench_compat      35 s  the compat layers against their projects' modules at the target shapes, eager only
#   memcheck          70 s  compute-sanitizer memcheck over the `cuda` tests, the caching allocator off so that it sees
#                           out-of-bounds accesses (-x: the first error ends it). racecheck and synccheck do not apply:
#                           the kernels use no shared memory and no barriers.
#   bench_rest        20 s  the rest of the sinusoidal sweep while time remains (partial results are kept)
#                 = 480 s of limits, plus start-up.
#
#   bench/gpu_check.sh OUTDIR          # PYTHON=... the interpreter (default python3)
#
# OUTDIR receives summary.txt (the outcome of every step and the tails of the logs) and results.tgz (every log and
# benchmark result), two files, as the device tool brings back at most eight.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PE_EXT_FORCE_CUDA=1 PE_EXT_TESTING=1 PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export MAX_JOBS=${MAX_JOBS:-16}
sanitizer=$CUDA_HOME/bin/compute-sanitizer  # not on PATH there

summary="$out/summary.txt"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())'
} >"$summary" 2>&1

finish() {  # the summary and the archive, whatever happened
  for log in "$work"/*.log; do
    [ -f "$log" ] && { echo "--- tail of $(basename "$log")"; tail -n 6 "$log"; } >>"$summary"
  done
  tar -czf "$out/results.tgz" -C "$work" . 2>/dev/null
  cat "$summary"
}
trap finish EXIT

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to NAME.log, record the outcome
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit $limit s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
  rc=$?
  local outcome="exit $rc"
  [ "$rc" -eq 124 ] && outcome="CUT at its $limit s limit"
  echo "$name: $outcome in $((SECONDS - start)) s" | tee -a "$summary"
  [ "$rc" -eq 0 ] || status=1
}

pytest_args=(-q -p no:cacheprovider -o addopts= -rs)
step build 150 $PY setup.py build_ext --inplace
step tests_cuda 90 $PY -m pytest "${pytest_args[@]}" -m cuda tests
step smoke_cpu 20 $PY -m pytest "${pytest_args[@]}" tests/test_backend.py tests/sinusoidal/test_parity.py -k "cpu and not grid"
step bench_targets 60 $PY bench/bench_sinusoidal.py --device cuda --targets --seconds 0.3 --out "$work/bench_targets"
step bench_rotary 35 $PY bench/bench_rotary.py --device cuda --targets --skip-compiled --seconds 0.2 \
  --out "$work/bench_rotary"
step bench_compat 35 $PY bench/bench_compat.py --device cuda --targets --skip-compiled --seconds 0.2 \
  --out "$work/bench_compat"
step memcheck 70 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
  $PY -m pytest "${pytest_args[@]}" -m cuda -x tests -k "not large_positions and not grid_stride"
step bench_rest 20 $PY bench/bench_sinusoidal.py --device cuda --seconds 0.15 --out "$work/bench_full"
exit $status
