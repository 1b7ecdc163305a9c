"""morphogen_exp: which way of batching private page queries (ChaCha8 DPF page-PIR) on one GPU should ship.

Data flows one way: config -> datasets -> queries -> strategies -> timing + answers -> parity ->
tracking (MLflow) -> report. The PIR engine itself lives in `morphogen_exp.pir`."""

__version__ = "0.1.0"

from .decide.rollout import register_resolver as _register_rollout_resolver  # noqa: E402  conf/config.yaml's hydra.searchpath

_register_rollout_resolver()
