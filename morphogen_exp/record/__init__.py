"""What a run records: the MLflow store, run descriptions, the sweep folder, the saved UI view. No JAX."""
