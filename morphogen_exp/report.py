"""`python -m morphogen_exp.report`: the entry point of morphogen_exp/decide/report.py."""

import sys

from .decide.report import main

if __name__ == "__main__":
    sys.exit(main())
