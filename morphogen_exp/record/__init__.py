"""What a run records: the MLflow store (tracking.py), the sweep folder (sweepdir.py), the saved UI view (uiview.py).

Contract (tests/test_imports.py): imports no JAX, nothing from measure/ or run/. Still to go (issue 32): tracking.py
reads the sweep as recorded with decide/decision and rollout.typed; that part moves to decide/."""
