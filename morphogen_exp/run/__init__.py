"""The processes: one cell (cell.py), the session, the sweep callback, the finals, the rollout trial, progress."""
