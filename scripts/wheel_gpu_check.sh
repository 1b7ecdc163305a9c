#!/usr/bin/env bash
# The wheel on a GPU host: build it from this checkout (pip wheel --no-deps), install it (not editable) in a fresh
# venv that takes its dependencies from this interpreter, and from /tmp build the CUDA kernels with the installed
# package (python -m morphogen_exp.pir.cuda, into a fresh cache), printing the package, its config tree, the
# sources it compiled and the library it built.
#   bash scripts/wheel_gpu_check.sh        # exit 0: built from the wheel; otherwise the failing step's output
#   then one cell (CELL, default "q=1 engine=bitsliced") with the installed console script, outside the checkout
# On the device tool, with the dependency wheels carried as for scripts/device_matrix.sh (carry: [".whl"]):
# they are installed into a folder the venv sees first (SKIP_WHEELS=1: use this interpreter's packages only).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/wheel-gpu-check.XXXXXX)
echo "work: $work"

deps=""
if [ -z "${SKIP_WHEELS:-}" ] && compgen -G "$repo/.whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/deps" "$repo"/.whl/*.whl
  deps=$work/deps
fi

# Built from a copy: an in-tree build writes build/ and *.egg-info into the checkout.
mkdir "$work/src"
tar -C "$repo" --exclude=./.git --exclude=./outputs --exclude=./build --exclude=./.whl --exclude=__pycache__ \
    --exclude='*.egg-info' -cf - . | tar -C "$work/src" -xf -
cd "$work/src"
if ! python3 -m pip wheel -q --no-deps . -w "$work/dist" 2>"$work/build.log"; then
  echo "isolated build failed (offline? see $work/build.log): building with this interpreter's setuptools"
  python3 -m pip wheel -q --no-deps --no-build-isolation . -w "$work/dist"
fi
wheel=$(ls "$work"/dist/morphogen_exp-*.whl)
echo "wheel: $wheel"

python3 -m venv --system-site-packages --without-pip "$work/venv"
site_packages=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "$deps" ]; then echo "$deps" >"$site_packages/_deps.pth"; fi
# This interpreter's own packages too: where python3 is itself a venv (the GPU image's), --system-site-packages
# reaches only the base interpreter's.
python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])' \
  | sort -u >"$site_packages/_interpreter.pth"
python3 -m pip --python "$work/venv/bin/python" install -q --no-index --no-deps --force-reinstall "$wheel"

cd /tmp  # outside the checkout; the checkout left off PYTHONPATH: the package comes from the venv
export MORPHOGEN_CUDA_CACHE=$work/cuda-cache  # a fresh build from the installed sources, never a cached library
PYTHONPATH=$(printf '%s' "${PYTHONPATH:-}" | tr ':' '\n' | grep -v -x -e "$repo" -e '' | paste -sd: -) || true
export PYTHONPATH
"$work/venv/bin/python" - "$work" <<'EOF'
import sys
from pathlib import Path

import morphogen_exp
import morphogen_exp.paths as paths

package = Path(morphogen_exp.__file__).parent
print("package:", package)
assert str(package).startswith(sys.argv[1]), f"morphogen_exp imported from {package}, not the venv"
print("config:", paths.conf_dir(), "(checkout)" if paths.checkout() else "(installed)")
print("cuda sources:", " ".join(sorted(str(p.relative_to(package)) for e in ("*.cu", "*.cuh") for p in package.rglob(e))))
EOF
lib=$("$work/venv/bin/python" -m morphogen_exp.pir.cuda)
echo "built: $lib ($(stat -c %s "$lib") bytes)"
if command -v nm >/dev/null; then
  echo "exports: $(nm -D --defined-only "$lib" | awk '/ T Morphogen/ {print $3}' | tr '\n' ' ')"
fi
# One cell from the installed package, in a folder outside the checkout (CELL="..." overrides; CELL= skips it).
cell=${CELL-q=1 engine=bitsliced}
if [ -n "$cell" ]; then
  mkdir -p "$work/cell" && cd "$work/cell"
  # shellcheck disable=SC2086
  "$work/venv/bin/morphogen-exp" $cell
  echo "cell outputs: $(ls "$work/cell/outputs" | tr '\n' ' ')"
fi
