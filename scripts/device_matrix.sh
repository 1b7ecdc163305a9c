#!/usr/bin/env bash
# One call of the GPU machine (the device tool): a stage of the measurements, results under $OUT.
#   bench                 engine kernels alone at mainnet volume (pallas), with the ceilings
#   small | mainnet       the 30-cell sweep on that dataset with $ENGINE (default pallas); extra
#                         arguments are more overrides (tiny works too: a CPU dry run, SKIP_WHEELS=1)
#   placement             on a machine of several GPUs: the sharded-scan gate (scripts/check_sharded.py), then 2^25
#                         pages (128 GiB: "does not fit" on one 80 GB card, sharded on two; an H200 capped to an
#                         H100's memory), then every strategy over placement=single,sharded,replicated at q=1,32 on
#                         mainnet until STAGE_SECONDS (560) run out, with $ENGINE (default pallas)
#   kernels               the GPU-gated tests against numpy ($TESTS, default: the bitsliced kernels, graph_replay's
#                         command-buffer targets and the floors' probes), the log under $OUT
#   capture               graph_replay with and without custom calls in its command buffers (a sweep axis), q=1,32 on
#                         $DATASET (default mainnet) with $ENGINE: what graph replay buys, side by side in one sweep
#   fma                   the ChaCha8 rotations on the FMA pipe (MORPHOGEN_CHACHA_FMA=2) against the default build: a
#                         bitsliced step stage by stage, each build twice in turn (the spread is the noise), then the
#                         kernel tests with the variant built (docs/benchmarks/2026-12-04-sass-mix-nvcc13)
#   wide                  an unmerged patch ($PATCH, default docs/patches/pipelined96.mbox) applied to a copy of this
#                         tree in /tmp/wide: its GPU tests and test_bitvec.py, then its step stage by stage twice
# Run from the repo root with `carry: [".whl"]` (../shared/tools/device-wheels.sh fills it) and the commit
# being measured named, written out from your checkout (the device copy's git view lags; required):
#   MORPHOGEN_CODE_VERSION=$(git rev-parse HEAD) SWEEP=mainnet-A bash scripts/device_matrix.sh mainnet
# Each stage ends inside a 10-minute call: the sweep stops at $SWEEP_TIMEOUT s (default 540; cells end
# KILLED). RESUME=1 re-runs the same sweep folder with resume=true (carry outputs/mlflow.db and
# outputs/multirun/$SWEEP back in): finished cells are copied, the rest run. A call brings back a few
# files: <sweep>-report.md, <sweep>.log and <sweep>.tgz (the sweep folder and the MLflow store).
set -uo pipefail
stage=${1:?usage: device_matrix.sh bench|small|mainnet|placement|kernels|capture|fma|wide [overrides...]}
engine=${ENGINE:-pallas}
out=${OUT:-/tmp/out}; mkdir -p "$out"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
# The device copy's git view lags the tree it was sent (git rev-parse there names an older commit): the
# commit measured must come from the checkout, spelled out in the command.
if [ -z "${MORPHOGEN_CODE_VERSION:-}" ] && [[ ! $stage =~ ^(tiny|kernels|fma|wide)$ ]]; then
  echo "error: set MORPHOGEN_CODE_VERSION=<commit> from your checkout (git rev-parse HEAD there, not on the device)"; exit 2
fi
echo "code: ${MORPHOGEN_CODE_VERSION:-unnamed}"

# sweep NAME TIMEOUT OVERRIDES...: one Hydra sweep into outputs/multirun/NAME (its folder made before anything
# logs into it), the report built even when the timeout stopped it, the log and report copied to $out.
sweep() {
  local name=$1 limit=$2; shift 2
  local dir=outputs/multirun/$name
  mkdir -p "$dir"
  { nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
    timeout "$limit" python3 -m morphogen_exp -m engine="$engine" bench.warmup=1 hydra.sweep.dir="$dir" "$@"
    echo "sweep exit status: $?"
    [ -f "$dir/report.md" ] || python3 -m morphogen_exp.report --sweep-dir "$dir" --publish
  } 2>&1 | grep -v -E "INFO|^\s*$" | tee -a "$dir/sweep.log" | tail -40
  cp "$dir/sweep.log" "$out/$name.log"
  cp "$dir/report.md" "$out/$name-report.md" 2>/dev/null
}

case $stage in
  bench)
    { nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
      python3 -m morphogen_exp.bench ceilings
      timeout 480 python3 -m morphogen_exp.bench breakdown --pages 16817159 --keys 3 --engine "$engine" \
        --tiles 4194304 --repeats 5 --csv "$out/breakdown.csv"; } 2>&1 | grep -v INFO | tee "$out/bench.log" ;;
  tiny|small|mainnet)
    name=${SWEEP:-$stage-$engine}
    resume=(); [ -n "${RESUME:-}" ] && resume=(resume=true)
    sweep "$name" "${SWEEP_TIMEOUT:-540}" 'strategy=glob(*)' q=1,2,4,8,16,32 dataset="$stage" bench.max_time_s=30 \
      "${resume[@]}" "${@:2}"
    tar czf "$out/$name.tgz" --exclude='*/.hydra' "outputs/multirun/$name" outputs/mlflow.db ;;
  placement)
    end=$(( $(date +%s) + ${STAGE_SECONDS:-560} ))  # the call's budget: the big database first, then the matrix
    python3 scripts/check_sharded.py "$engine" || exit 1
    # An H200 stands in for an 80 GB card with its memory capped to an H100's (labelled by MEMORY_CAP in the log).
    if nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | grep -q H200; then
      export XLA_PYTHON_CLIENT_MEM_FRACTION=0.55; echo "MEMORY_CAP: H200 capped to 0.55 of its memory (~77.6 GB)"
    fi
    # DATASET / BIG_PAGES: a CPU dry run (DATASET=tiny BIG_PAGES=700, XLA_FLAGS=--xla_force_host_platform_device_count=2)
    for part in "big 200 strategy=full_batch placement=sharded,single q=1 dataset.num_pages=${BIG_PAGES:-33554432}" \
                "${DATASET:-mainnet} 0 strategy=${STRATEGIES:-glob(*)} placement=single,sharded,replicated q=1,32"; do
      set -- $part; name=${SWEEP:-placement-$engine}-$1; limit=$(( end - $(date +%s) ))
      [ "$2" -gt 0 ] && [ "$2" -lt "$limit" ] && limit=$2; shift 2
      sweep "$name" "$limit" dataset="${DATASET:-mainnet}" bench.max_time_s=8 "$@"
    done
    tar czf "$out/placement-$engine.tgz" --exclude='*/.hydra' outputs/multirun outputs/mlflow.db ;;
  kernels)
    { nvidia-smi -L
      timeout "${SWEEP_TIMEOUT:-560}" python3 -m pytest -q -p no:cacheprovider \
        ${TESTS:-tests/test_bitvec.py tests/test_bitsliced_engine.py tests/test_graph_replay_gpu.py tests/test_floors_gpu.py}
      echo "pytest exit status: $?"; } 2>&1 | tail -60 | tee "$out/kernel-tests.log" ;;
  capture)
    name=${SWEEP:-capture-$engine}
    sweep "$name" "${SWEEP_TIMEOUT:-540}" strategy=graph_replay \
      'strategy.command_buffer=null,[FUSION,CUSTOM_CALL,WHILE,CONDITIONAL]' q=1,32 dataset="${DATASET:-mainnet}" \
      bench.max_time_s=15 "${@:2}"
    tar czf "$out/$name.tgz" --exclude='*/.hydra' "outputs/multirun/$name" outputs/mlflow.db ;;
  fma)
    { nvidia-smi -L
      for i in 1 2; do for v in "" MORPHOGEN_CHACHA_FMA=2; do
        timeout 100 python3 scripts/bitsliced_stages.py --keys 96,3 --tile-log2 20,22 --reps 20 --defines "$v" \
          --json "$out/stages-${v:-default}-$i.json"; done; done
      MORPHOGEN_CUDA_DEFINES=MORPHOGEN_CHACHA_FMA=2 timeout 200 python3 -m pytest -q -p no:cacheprovider \
        tests/test_bitvec.py tests/test_bitsliced_engine.py 2>&1 | tail -5
      echo "pytest exit status (variant built): ${PIPESTATUS[0]}"; } 2>&1 | tee "$out/fma.log" ;;
  wide)
    patch_file=$PWD/${PATCH:-docs/patches/pipelined96.mbox}; dir=/tmp/wide
    rm -rf "$dir" && mkdir -p "$dir" && tar c --exclude=./.git --exclude=./.whl --exclude=./outputs . | tar x -C "$dir" || exit 1
    (cd "$dir" && { git apply "$patch_file" 2>/dev/null || patch -s -p1 < "$patch_file"; }) \
      || { echo "error: $patch_file does not apply to this tree"; exit 1; }
    { nvidia-smi -L
      cd "$dir" && export PYTHONPATH=/tmp/site:$dir MORPHOGEN_CUDA_CACHE=$dir/.cuda-cache
      # first one small case under a short timeout: a kernel that hangs (setmaxnreg, a barrier) costs 2 minutes, not the call
      timeout 120 python3 -m pytest -x -q -p no:cacheprovider tests/test_bitvec_wide.py -k "2700-0-40-8-9" 2>&1 | tail -5
      smoke=${PIPESTATUS[0]}; echo "smoke test exit status: $smoke"
      [ "$smoke" -eq 0 ] || { echo "the smoke test failed or hung: nothing more runs on this patch"; exit 1; }
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_bitvec_wide.py tests/test_bitvec.py 2>&1 | tail -30
      echo "pytest exit status: ${PIPESTATUS[0]}"
      for i in 1 2; do timeout 100 python3 scripts/bitsliced_stages.py --keys 96,24 --tile-log2 20,20 --reps 20 \
        --json "$out/wide-stages-$i.json"; done; } 2>&1 | tee "$out/wide.log" ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
ls -la "$out"
