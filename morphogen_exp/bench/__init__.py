"""Engine benchmarks, apart from the engine and the orchestrator (no Hydra, no MLflow): run
``python -m morphogen_exp.bench --help``. common.py: data, timing and ceilings; kernels.py: the scan
split into parts and the Pallas block searches, each as an op set run through pir's own scan."""
