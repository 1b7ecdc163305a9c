"""The processes: one cell (cell.py, Hydra's task), the session around cells, the sweep callback (sweep.py), the
finals, the rollout trial, the progress line. The top floor below __main__: nothing in the package's lower floors
imports it (tests/test_imports.py)."""
