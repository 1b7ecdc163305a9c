#!/usr/bin/env bash
# One call of the GPU machine (the device tool): a stage of the measurements, results under $OUT.
#   bench                 engine kernels alone at mainnet volume (xla and pallas), with the ceilings
#   small | mainnet       the 30-cell sweep on that dataset with $ENGINE (default pallas); extra
#                         arguments are more overrides (tiny works too: a CPU dry run, SKIP_WHEELS=1)
# Run from the repo root with `carry: [".whl"]` (../shared/tools/device-wheels.sh fills it), e.g.
#   ENGINE=xla bash scripts/device_matrix.sh small
# Each stage ends inside a 10-minute call: the sweep stops at $SWEEP_TIMEOUT s (default 540; cells end
# KILLED) and the report is then rebuilt from the cells that finished. A call brings back only a few
# files, so a sweep stage returns two: <stage>-<engine>-report.md and <stage>-<engine>.tgz (the sweep
# folder: report, CSV, plots, rollout guard, logs; and the MLflow store, to rebuild or resume from).
set -uo pipefail
stage=${1:?usage: device_matrix.sh bench|small|mainnet}
engine=${ENGINE:-pallas}
out=${OUT:-/tmp/out}; mkdir -p "$out"
if [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONUNBUFFERED=1
case $stage in
  bench)
    { nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
      python3 -m morphogen_exp.bench ceilings
      timeout 480 python3 -m morphogen_exp.bench engine --pages 16777216 --keys 3,96 --engines xla,pallas \
        --tile-pages 65536 --repeats 5 --csv "$out/bench.csv"; } 2>&1 | grep -v INFO > "$out/bench.log"
    tail -5 "$out/bench.log" ;;
  tiny|small|mainnet)
    dir=outputs/multirun/$stage-$engine
    { nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
      timeout "${SWEEP_TIMEOUT:-540}" python3 -m morphogen_exp -m 'strategy=glob(*)' q=1,2,4,8,16,32 \
        dataset="$stage" engine="$engine" bench.warmup=1 bench.iterations=2 hydra.sweep.dir="$dir" "${@:2}"
      [ -f "$dir/report.md" ] || python3 -m morphogen_exp.report --sweep-dir "$dir"
    } 2>&1 | grep -v INFO > "$dir.log"
    cp "$dir.log" "$dir/sweep.log" 2>/dev/null
    cp "$dir/report.md" "$out/$stage-$engine-report.md" 2>/dev/null
    tar czf "$out/$stage-$engine.tgz" --exclude='*/.hydra' "$dir" outputs/mlflow.db
    tail -5 "$dir.log" ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
ls "$out"
