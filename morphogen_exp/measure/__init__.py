"""The device side of a cell: datasets, queries, placement, memory, timing, stats, parity, floors, the device
lock and state.

Contract (tests/test_imports.py): imports no Hydra, nothing from record/, decide/, run/ or bench/; below it only strategies/,
pir/ and the top-level config, paths, fields, identity. Still to go (issue 32): devstate imports MLflow's system
metrics monitor."""
