"""``python -m morphogen_exp.pir.cuda [--force]``: build the kernel now (an install step) and print its path."""

import sys

from morphogen_exp.pir.cuda import CudaUnavailable, build

if __name__ == "__main__":
    try:
        print(build(force="--force" in sys.argv[1:]))
    except CudaUnavailable as e:
        sys.exit(f"error: {e}")
