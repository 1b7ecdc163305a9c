"""``python -m morphogen_exp.pir.bmma [--force]``: build the kernel now (an install step) and print its path."""

import sys

from morphogen_exp.pir.bmma import BmmaUnavailable, build

if __name__ == "__main__":
    try:
        print(build(force="--force" in sys.argv[1:]))
    except BmmaUnavailable as e:
        sys.exit(f"error: {e}")
