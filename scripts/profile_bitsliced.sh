#!/usr/bin/env bash
# One device call for issue 31: profile, then time compile-time variants of the bitsliced kernels against the
# default build on the same card, in one process each and in turn (the spread of the two default runs is the noise).
#   bash scripts/profile_bitsliced.sh [profile] [variants] [read] [wide]
#     profile   ncu --set full (clocks left alone) of the expansion alone and the MMA scan alone at 96 keys on a
#               2^20 tile, and of the scan and the pipelined kernel at 3 keys on 2^22 (scripts/bitsliced_stages.py --once)
#     variants  bitsliced_stages.py at 96 keys on 2^20 for the default build (twice) and each $VARIANTS entry
#               (a MORPHOGEN_CUDA_DEFINES string; default: the scan's next-chunk loads, the expansion at 2 blocks an SM)
#     read      scripts/read_probe_bench.cu: streaming-read variants for the floors' read probe, and the D2D copy
#     wide      ncu of the kept patch's wide pipelined kernel (docs/patches/pipelined96.mbox, stages=5) at 96 keys
# Run from the repo root with `carry: [".whl"]`; results land in $OUT (at most 8 files: one log, JSON and ncu text).
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
stages=(${@:-profile variants read})
log=$out/profile.log
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader | tee -a "$log"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee -a "$log"
metrics_page() {  # ncu report -> the details page as text (sections: speed of light, compute, memory, occupancy, stalls)
  ncu --import "$1" --page details --print-units base > "$2" 2>&1
  ncu --import "$1" --page raw --csv --metrics \
    sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fmaheavy.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_imma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,launch__registers_per_thread \
    >> "$2" 2>&1
}
for st in "${stages[@]}"; do
  echo "=== $st" | tee -a "$log"
  case $st in
    profile)
      timeout 200 ncu --clock-control none --set full -k 'regex:expand_to_bitvectors|bmma_scan' --launch-count 2 \
        -o /tmp/ncu-k96 -f python3 scripts/bitsliced_stages.py --once --keys 96 --tile-log2 20 >> "$log" 2>&1
      echo "ncu k96 exit $?" | tee -a "$log"; metrics_page /tmp/ncu-k96.ncu-rep "$out/ncu-k96.txt"
      timeout 200 ncu --clock-control none --set full -k 'regex:bmma_scan|expand_scan_pipelined' --launch-count 2 \
        -o /tmp/ncu-k3 -f python3 scripts/bitsliced_stages.py --once --keys 3 --tile-log2 22 >> "$log" 2>&1
      echo "ncu k3 exit $?" | tee -a "$log"; metrics_page /tmp/ncu-k3.ncu-rep "$out/ncu-k3.txt" ;;
    variants)
      IFS=';' read -r -a vs <<< "${VARIANTS:-MORPHOGEN_SCAN_PIPE=1;MORPHOGEN_EXPAND_MINB=2}"
      for v in "" "${vs[@]}" ""; do
        timeout 120 python3 scripts/bitsliced_stages.py --keys 96 --tile-log2 20 --reps 20 --defines "$v" \
          2>>"$log" | tee -a "$out/stages.jsonl" "$log"
      done ;;
    read)
      nvcc -O3 -gencode=arch=compute_90a,code=sm_90a scripts/read_probe_bench.cu -o /tmp/rpb \
        && /tmp/rpb 16 2>&1 | tee "$out/read_probe.txt" | tee -a "$log" ;;
    wide)
      dir=/tmp/wide; rm -rf "$dir" && mkdir -p "$dir"
      tar c --exclude=./.git --exclude=./.whl --exclude=./outputs . | tar x -C "$dir"
      (cd "$dir" && git apply "$OLDPWD/docs/patches/pipelined96.mbox") || { echo "patch does not apply" | tee -a "$log"; continue; }
      (cd "$dir" && PYTHONPATH=/tmp/site:$dir MORPHOGEN_CUDA_CACHE=$dir/.cuda-cache timeout 150 ncu --clock-control none \
        --set full -k 'regex:expand_scan_wide' --launch-count 1 -o /tmp/ncu-wide -f \
        python3 scripts/bitsliced_stages.py --once --keys 96 --tile-log2 20 >> "$log" 2>&1)
      echo "ncu wide exit $?" | tee -a "$log"; metrics_page /tmp/ncu-wide.ncu-rep "$out/ncu-wide.txt" ;;
  esac
done
# The SASS instruction mix of the kernels as built (per opcode, the expansion and the scan at KG = 4).
lib=$(find "${MORPHOGEN_CUDA_CACHE:-$HOME/.cache/morphogen_exp}" -name '*.so' -printf '%T@ %p\n' 2>/dev/null | sort -n | head -1 | cut -d' ' -f2)
[ -n "$lib" ] && cuobjdump -sass "$lib" > /tmp/all.sass 2>/dev/null && for f in expand_to_bitvectors bmma_scanILi4; do
  echo "== $f"; awk -v f="$f" '/Function : /{p = index($0, f) > 0} p' /tmp/all.sass \
    | grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P[0-9T] )?[A-Z0-9_]+(\.[A-Z0-9_]+)*' | awk '{print $NF}' \
    | sort | uniq -c | sort -rn | head -40; done > "$out/sass_mix.txt"
ls -la "$out"
