"""The device side of a cell: datasets, queries, placement, timing, parity, floors. No MLflow, no Hydra."""
