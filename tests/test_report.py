"""The decision rules on a hand-made matrix: GO / NO-GO per rule, ranking, and ties within noise."""

import pandas as pd

from morphogen_exp.decision import DecisionRules, decide


def _matrix(qps_at_32: dict[str, float], speedup_at_4: dict[str, float] | None = None) -> pd.DataFrame:
    rows = []
    for name, qps in qps_at_32.items():
        for q in (1, 4, 32):
            rows.append({"our_strategy": name, "q": q, "status": "ok", "parity_ok": 1, "error_message": "",
                         "single_ms_per_batch": 32e3 / qps * 2, "single_qps": qps / 2,
                         "batch_vs_single_speedup": (speedup_at_4 or {}).get(name, 2.0) if q == 4 else 2.0,
                         "batch_ms_per_batch": 32e3 / qps, "batch_qps": qps if q == 32 else qps / 4})
    return pd.DataFrame(rows)


PREFER = DecisionRules(tie_within=0.02, prefer=("full_batch", "tiled", "graph_replay"))


def test_tie_within_noise_ships_the_preferred_strategy() -> None:
    d = decide(_matrix({"graph_replay": 145.06, "full_batch": 145.02, "tiled": 94.4}), PREFER)
    assert (d.selected, d.fallback) == ("full_batch", "graph_replay")
    assert "within 2%" in d.tie_note


def test_a_clear_winner_is_not_overruled_by_preference() -> None:
    d = decide(_matrix({"graph_replay": 150.0, "full_batch": 140.0, "tiled": 94.4}), PREFER)
    assert (d.selected, d.fallback, d.tie_note) == ("graph_replay", "full_batch", "")


def test_without_a_tolerance_the_best_score_wins() -> None:
    d = decide(_matrix({"graph_replay": 145.06, "full_batch": 145.02}), DecisionRules())
    assert d.selected == "graph_replay"


def test_a_no_go_strategy_is_never_selected_even_if_fastest() -> None:
    d = decide(_matrix({"multi_stream": 500.0, "full_batch": 145.0}, speedup_at_4={"multi_stream": 0.9}), PREFER)
    assert d.selected == "full_batch" and not d.verdicts["multi_stream"].go
    assert "min_speedup" in d.verdicts["multi_stream"].reasons[0]


def test_prefer_round_trips_through_mlflow_params() -> None:
    params = {"decision.tie_within": "0.02", "decision.prefer": "['full_batch', 'tiled']"}
    assert DecisionRules.from_params(params).prefer == ("full_batch", "tiled")
    assert DecisionRules.from_params({"decision.prefer": "full_batch,tiled"}).prefer == ("full_batch", "tiled")


def test_plots_skip_a_sweep_whose_cells_all_failed(tmp_path) -> None:
    from morphogen_exp.report import _plots

    df = _matrix({"full_batch": 145.0})
    assert [p.name for p in _plots(df, tmp_path)] == ["latency_vs_q.png", "qps_vs_q.png"]
    df["status"], df["batch_qps"], df["batch_ms_per_batch"] = "failed", float("nan"), float("nan")
    assert _plots(df, tmp_path / "none") == []  # log axes over no data raised before
    assert decide(df, PREFER).selected is None
