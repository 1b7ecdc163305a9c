"""From recorded cells to what ships: the decision, the report (python -m morphogen_exp.report), the rollout guard.

Contract (tests/test_imports.py): imports nothing from run/; reads record/ and measure/ (stats), never the device."""
