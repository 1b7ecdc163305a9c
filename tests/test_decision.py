"""The decision on hand-made matrices: interval verdicts, overlap ties, point-estimate rules, labels, rule parsing."""

from __future__ import annotations

import pandas as pd
import pytest

from morphogen_exp.config import ConfigError, DecisionConfig
from morphogen_exp.decide.decision import GO, NO_GO, UNDECIDED, DecisionRules, Final, best_per_q, decide
from morphogen_exp.identity import config_labels

PREFER = ("full_batch", "tiled", "graph_replay")


def _cell(config: str, q: int, qps: float, speedup: float, half: float | None = None, sp_half: float | None = None,
          strategy: str | None = None, **extra) -> dict:
    row = {"config": config, "our_strategy": strategy or config.split("[")[0], "q": q, "status": "ok", "parity_ok": 1,
           "error_message": "", "batch_qps": qps, "batch_vs_single_speedup": speedup, "batch_ms_per_batch": 1e3 * q / qps}
    if half is not None:
        row |= {"batch_qps_lo": qps - half, "batch_qps_hi": qps + half}
    if sp_half is not None:
        row |= {"batch_vs_single_speedup_lo": speedup - sp_half, "batch_vs_single_speedup_hi": speedup + sp_half}
    return row | extra


def _matrix(spec: dict[str, tuple[float, float]], speedup_at_4: dict[str, tuple[float, float]] | None = None,
            intervals: bool = True) -> pd.DataFrame:
    """spec: config -> (batch_qps at q=32, its half-width); speedup_at_4: config -> (speedup, half-width)."""
    rows = []
    for name, (qps, half) in spec.items():
        for q in (1, 4, 32):
            sp, sp_half = (speedup_at_4 or {}).get(name, (2.0, 0.05)) if q == 4 else (2.0, 0.05)
            rows.append(_cell(name, q, qps if q == 32 else qps / 4, sp, half if intervals else None,
                              sp_half if intervals else None))
    return pd.DataFrame(rows)


def test_a_clear_win_with_intervals_is_go_and_ranked_by_score() -> None:
    d = decide(_matrix({"graph_replay": (150.0, 0.5), "full_batch": (140.0, 0.5)}), DecisionRules(prefer=PREFER))
    assert d.intervals and (d.selected, d.fallback, d.tie_note) == ("graph_replay", "full_batch", "")
    assert d.verdicts["graph_replay"].score is not None and d.verdicts["graph_replay"].score.format() == "150 [149.5, 150.5]"


def test_a_speedup_interval_straddling_the_threshold_is_not_enough_evidence() -> None:
    d = decide(_matrix({"micro_batch": (500.0, 1.0), "full_batch": (140.0, 1.0)},
                       speedup_at_4={"micro_batch": (1.02, 0.05)}), DecisionRules())
    v = d.verdicts["micro_batch"]
    assert v.status == UNDECIDED and not v.go and not v.failures
    assert "more rounds" in v.undecided[0] and "q=4" in v.undecided[0]
    assert d.selected == "full_batch"  # the fastest is not shipped by chance
    assert "1 INCONCLUSIVE" in d.summary() and "micro_batch" in d.summary()


def test_a_speedup_interval_below_the_threshold_is_no_go() -> None:
    d = decide(_matrix({"multi_stream": (500.0, 1.0)}, speedup_at_4={"multi_stream": (0.9, 0.05)}), DecisionRules())
    assert d.verdicts["multi_stream"].status == NO_GO and d.selected is None
    assert d.summary().startswith("No configuration is GO")


def test_overlapping_intervals_tie_and_ship_the_preferred_strategy() -> None:
    d = decide(_matrix({"graph_replay": (145.5, 1.0), "full_batch": (145.0, 1.0), "tiled": (94.4, 1.0)}),
               DecisionRules(prefer=PREFER))
    assert (d.selected, d.fallback) == ("full_batch", "graph_replay")
    assert "intervals overlap" in d.tie_note and "tiled" not in d.tie_note


def test_medians_within_tie_within_are_a_tie_even_with_disjoint_intervals() -> None:
    # 1% apart, each measured to +-0.1%: significant, but inside the equivalence margin (issue 30: a ranking on
    # such a gap flips between processes), so decision.prefer decides; 3% apart is no tie.
    d = decide(_matrix({"graph_replay": (146.5, 0.1), "full_batch": (145.0, 0.1)}),
               DecisionRules(tie_within=0.02, prefer=PREFER))
    assert d.selected == "full_batch" and "medians are within 2%" in d.tie_note
    d = decide(_matrix({"graph_replay": (149.5, 0.1), "full_batch": (145.0, 0.1)}),
               DecisionRules(tie_within=0.02, prefer=PREFER))
    assert (d.selected, d.tie_note) == ("graph_replay", "")


def test_point_estimates_keep_the_fixed_rules() -> None:
    m = _matrix({"graph_replay": (145.06, 0), "full_batch": (145.02, 0)}, speedup_at_4={"multi": (0.9, 0)}, intervals=False)
    d = decide(m, DecisionRules(tie_within=0.02, prefer=PREFER))
    assert not d.intervals and d.selected == "full_batch" and "within 2% (point estimates)" in d.tie_note
    assert "Intervals were not available" in d.summary()
    assert DecisionRules().tie_within == DecisionConfig().tie_within == 0.02  # one default, the schema's
    assert decide(m, DecisionRules(tie_within=0.0)).selected == "graph_replay"  # no tolerance: the best point wins
    slow = _matrix({"multi_stream": (500.0, 0)}, speedup_at_4={"multi_stream": (0.97, 0)}, intervals=False)
    assert decide(slow, DecisionRules()).verdicts["multi_stream"].status == NO_GO


def test_each_configuration_is_judged_not_each_strategy() -> None:
    rows = [_cell(f"tiled[tile={t}]", q, qps, 2.0, 0.5, 0.05, strategy="tiled")
            for t, qps in ((1, 90.0), (2, 120.0), (4, 100.0)) for q in (4, 32)]
    rows.append({**rows[0], "q": 32, "status": "failed", "error_message": "boom", "config": "tiled[tile=8]"})
    d = decide(pd.DataFrame(rows), DecisionRules())
    assert set(d.verdicts) == {"tiled[tile=1]", "tiled[tile=2]", "tiled[tile=4]", "tiled[tile=8]"}
    assert (d.selected, d.fallback) == ("tiled[tile=2]", "tiled[tile=4]")
    assert d.verdicts["tiled[tile=8]"].status == NO_GO and "coverage" in d.verdicts["tiled[tile=8]"].failures[0]


def test_a_capped_noisy_cell_says_so() -> None:
    row = _cell("full_batch", 4, 100.0, 2.0, 0.5, 0.05, batch_capped=1, batch_noise=0.04, batch_samples=7, max_noise=0.01)
    v = decide(pd.DataFrame([row]), DecisionRules()).verdicts["full_batch"]
    assert v.go and v.notes == ["q=4: the batch path hit the time cap at noise 4.0% > bench.max_noise 1.0% (7 samples)"]


def test_a_latency_budget_straddled_by_the_interval_is_undecided() -> None:
    row = _cell("full_batch", 4, 100.0, 2.0, 0.5, 0.05, batch_ms_per_batch=40.0, batch_ms_per_batch_lo=39.0,
                batch_ms_per_batch_hi=41.0)
    assert decide(pd.DataFrame([row]), DecisionRules(latency_budget_ms=40.5)).verdicts["full_batch"].status == UNDECIDED
    assert decide(pd.DataFrame([row]), DecisionRules(latency_budget_ms=38.0)).verdicts["full_batch"].status == NO_GO
    assert decide(pd.DataFrame([row]), DecisionRules(latency_budget_ms=41.0)).verdicts["full_batch"].status == GO


def test_labels_name_only_what_varies_within_a_strategy() -> None:
    base = {"strategy.name": "tiled", "strategy.original": "tiled_tile4", "seed": "0", "dataset.name": "tiny",
            "dataset.num_pages": "4096", "q": "4", "mlflow.tracking_uri": "x"}
    configs = {
        "a": ("tiled", {**base, "strategy.tile": "1", "strategy.guard_env.MORPHOGEN_GPU_BATCH_TILE_SIZE": "1"}),
        "b": ("tiled", {**base, "strategy.tile": "4", "strategy.guard_env.MORPHOGEN_GPU_BATCH_TILE_SIZE": "4"}),
        "c": ("full_batch", {**base, "strategy.name": "full_batch", "seed": "1"}),
        "d": ("full_batch", {**base, "strategy.name": "full_batch", "dataset.name": "small", "dataset.num_pages": "65536"}),
    }
    assert config_labels(configs) == {"a": "tiled[tile=1]", "b": "tiled[tile=4]",
                                      "c": "full_batch[dataset=tiny,seed=1]", "d": "full_batch[dataset=small,seed=0]"}
    assert config_labels({"a": configs["a"]}) == {"a": "tiled"}


def test_rules_parse_strictly_and_take_overrides() -> None:
    params = {"decision.tie_within": "0.02", "decision.prefer": "['full_batch', 'tiled']", "decision.require_parity": "True"}
    assert DecisionRules.from_params(params).prefer == ("full_batch", "tiled")
    assert DecisionRules.from_params({"decision.prefer": "full_batch,tiled"}).prefer == ("full_batch", "tiled")
    assert DecisionRules.from_params({"decision.latency_budget_ms": "None"}).latency_budget_ms is None
    with pytest.raises(ConfigError, match="require_parity must be true or false"):
        DecisionRules.from_params({"decision.require_parity": "maybe"})
    r = DecisionRules().overridden(["rank_by=batch_ms_per_batch", "prefer=[tiled, full_batch]", "min_speedup=1.1"])
    assert (r.rank_by, r.prefer, r.min_speedup) == ("batch_ms_per_batch", ("tiled", "full_batch"), 1.1)
    with pytest.raises(ConfigError, match="rank_by='nope' is not a metric"):
        DecisionRules().overridden(["rank_by=nope"])
    with pytest.raises(ConfigError, match="must be NAME=VALUE"):
        DecisionRules().overridden(["rank_by"])


def test_best_per_q_names_the_engine_that_wins_each_batch_size() -> None:
    """Two engines: one wins small batches, the other large ones (as fused and bitsliced do on mainnet); ties overlap;
    a cell without exact parity never counts as best."""
    rows = [_cell("full_batch[engine=fused]", 1, 40.0, 1.0, 0.2), _cell("full_batch[engine=bitsliced]", 1, 35.0, 1.0, 0.2),
            _cell("full_batch[engine=fused]", 4, 107.0, 2.7, 1.0), _cell("full_batch[engine=bitsliced]", 4, 107.5, 2.7, 1.0),
            _cell("full_batch[engine=fused]", 32, 97.0, 2.4, 1.0), _cell("full_batch[engine=bitsliced]", 32, 277.0, 3.0, 2.0),
            _cell("tiled[engine=fused]", 32, 400.0, 3.0, 1.0, parity_ok=0)]
    best = {b.q: b for b in best_per_q(pd.DataFrame(rows), DecisionRules())}
    assert best[1].config == "full_batch[engine=fused]" and best[1].tied == ()
    assert best[4].config == "full_batch[engine=bitsliced]" and best[4].tied == ("full_batch[engine=fused]",)
    assert best[32].config == "full_batch[engine=bitsliced]" and best[32].score.format() == "277 [275, 279]"
    by_latency = best_per_q(pd.DataFrame(rows), DecisionRules(rank_by="batch_ms_per_batch", require_parity=False))
    assert {b.q: b.config for b in by_latency}[32] == "tiled[engine=fused]"  # lowest latency wins; parity not required


def test_cells_from_two_kinds_of_device_give_no_decision_and_two_cards_a_caveat() -> None:
    """Timings compare only within one device: a sweep resumed on another kind of card ships nothing."""
    df = _matrix({"graph_replay": (150.0, 0.5), "full_batch": (140.0, 0.5)})
    one = decide(df.assign(device_kind="H100"), DecisionRules(prefer=PREFER))
    assert (one.selected, one.devices_note, one.devices_mixed) == ("graph_replay", "", False)

    kinds = df.assign(device_kind=["H100" if i % 2 else "H200" for i in range(len(df))])
    d = decide(kinds, DecisionRules(prefer=PREFER))
    assert d.devices_mixed and (d.selected, d.fallback) == (None, None)
    assert d.verdicts["graph_replay"].go  # the verdicts stay readable; only the choice is withheld
    assert d.summary().startswith("No decision: the cells ran on 2 device kinds (H100, H200)")

    cards = df.assign(device_kind="H100", device_uuid=[f"GPU-{i % 2:08d}" for i in range(len(df))])
    d = decide(cards, DecisionRules(prefer=PREFER))
    assert d.selected == "graph_replay" and not d.devices_mixed
    assert "The cells ran on 2 cards of that kind (00000000, 00000001)" in d.summary()


def test_a_true_tie_with_the_loop_below_the_ranking_q_can_ship() -> None:
    # x1.00 [0.985, 1.015] at q=4: non-inferior within tie_within (2%); better than the loop at q=32
    d = decide(_matrix({"full_batch": (140.0, 0.5)}, speedup_at_4={"full_batch": (1.0, 0.015)}), DecisionRules())
    assert d.verdicts["full_batch"].status == GO and d.outcome == GO and d.selected == "full_batch"
    # worse than the loop beyond the margin at q=4: NO-GO
    d = decide(_matrix({"full_batch": (140.0, 0.5)}, speedup_at_4={"full_batch": (0.95, 0.01)}), DecisionRules())
    assert d.verdicts["full_batch"].status == NO_GO and d.outcome == NO_GO
    assert d.headline().startswith("NO-GO")


def test_at_the_ranking_q_the_batch_path_must_beat_the_loop() -> None:
    rows = [_cell("full_batch", 4, 100.0, 2.0, 0.5, 0.05), _cell("full_batch", 32, 140.0, 1.0, 0.5, 0.01)]
    d = decide(pd.DataFrame(rows), DecisionRules())
    v = d.verdicts["full_batch"]
    assert v.status == UNDECIDED and "better than the loop at q=32" in v.undecided[0]
    assert d.outcome == UNDECIDED and d.headline().startswith("INCONCLUSIVE") and d.selected is None
    rows[1] = _cell("full_batch", 32, 140.0, 0.99, 0.5, 0.004)
    assert decide(pd.DataFrame(rows), DecisionRules()).verdicts["full_batch"].status == NO_GO


def test_fewer_samples_than_the_confidence_needs_is_inconclusive_never_go() -> None:
    # two rounds at 99%: [min, max] covers the median with 50% only
    rows = [_cell("full_batch", q, 100.0 * q, 2.0, 0.5, 0.05, speedup_pairs=2, confidence=0.99) for q in (4, 32)]
    d = decide(pd.DataFrame(rows), DecisionRules())
    v = d.verdicts["full_batch"]
    assert v.status == UNDECIDED and d.selected is None
    assert "2 samples cannot give a 99% interval (it needs 8)" in v.undecided[0]
    rows = [r | {"speedup_pairs": 8} for r in rows]
    assert decide(pd.DataFrame(rows), DecisionRules()).selected == "full_batch"
    old = [r | {"speedup_pairs": None, "single_samples": 2, "batch_samples": 40} for r in rows]  # unpaired runs
    assert decide(pd.DataFrame(old), DecisionRules()).verdicts["full_batch"].status == UNDECIDED


def test_data_axes_and_measurement_settings_are_never_ranked_as_configurations() -> None:
    m = _matrix({"full_batch": (140.0, 0.5)})
    for key, values in (("seed", ("0", "1")), ("dataset.num_pages", ("1", "301")), ("bench.max_noise", ("0.01", "0.05")),
                        ("parity.xor_check", ("True", "False"))):
        rows = []
        for value in values:
            rows += [r | {"config": f"full_batch[{key}={value}]", "_params": {"strategy.name": "full_batch", key: value}}
                     for r in m.to_dict("records")]
        d = decide(pd.DataFrame(rows), DecisionRules())
        assert d.selected is None and d.outcome == "NO DECISION" and d.devices_mixed, key
        assert key in d.refusal and d.headline().startswith("NO DECISION"), key
    same = [r | {"_params": {"strategy.name": "full_batch", "seed": "0", "bench.compilation_cache_dir": str(i)}}
            for i, r in enumerate(m.to_dict("records"))]
    assert decide(pd.DataFrame(same), DecisionRules()).selected == "full_batch"  # settings that do not change a measurement


def test_finals_confirm_or_overturn_the_selection_at_the_ranking_q() -> None:
    m = _matrix({"graph_replay": (145.5, 1.0), "full_batch": (145.0, 1.0)})
    rules = DecisionRules(prefer=PREFER)
    assert decide(m, rules).selected == "full_batch"
    tied = Final(32, "full_batch", "graph_replay", 1.004, 0.998, 1.01, 12)
    d = decide(m, rules, [tied])
    assert (d.selected, d.fallback) == ("full_batch", "graph_replay") and "confirmed full_batch" in d.finals_note
    beat = Final(32, "full_batch", "graph_replay", 1.035, 1.025, 1.045, 12)  # clears 1 + tie_within (1.02)
    d = decide(m, rules, [beat, Final(8, "full_batch", "graph_replay", 1.5, 1.4, 1.6, 12)])
    assert (d.selected, d.fallback) == ("graph_replay", "full_batch") and "overturned" in d.finals_note
    assert d.finals_note in d.summary()
    elsewhere = Final(8, "full_batch", "graph_replay", 1.5, 1.4, 1.6, 12)  # another q does not move the ranking q
    assert decide(m, rules, [elsewhere]).selected == "full_batch"


def test_the_fallback_among_tied_configurations_follows_prefer_not_noise() -> None:
    # tiled clearly first; full_batch, graph_replay and micro_batch tied behind it: the fallback is the preferred one,
    # whichever of the three the noise put ahead
    prefer = ("full_batch", "tiled", "micro_batch", "graph_replay")
    for order in ((130.0, 130.5, 131.0), (131.0, 130.0, 130.5), (130.5, 131.0, 130.0)):
        m = _matrix({"tiled": (150.0, 0.5), "graph_replay": (order[0], 1.0), "micro_batch": (order[1], 1.0),
                     "full_batch": (order[2], 1.0)})
        d = decide(m, DecisionRules(prefer=prefer))
        assert (d.selected, d.fallback) == ("tiled", "full_batch"), order


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_rules_refuse_numbers_that_are_not_finite(value: float) -> None:
    """NaN compares false with every bound, so a rule of NaN would pass every check: refused by name."""
    with pytest.raises(ConfigError, match="decision.min_speedup must be a number"):
        DecisionRules.from_mapping({"min_speedup": value})


def test_finals_overturn_only_beyond_the_tie_margin() -> None:
    """Issue 30 item 8: x1.033 [1.017, 1.044] is faster than 1 but not beyond the 2% margin: the selection stands,
    said as a tie, so the same sweep ships the same configuration whichever way the noise fell."""
    m = _matrix({"tiled": (145.5, 1.0), "full_batch": (145.0, 1.0)})
    rules = DecisionRules(prefer=PREFER)
    assert decide(m, rules).selected == "full_batch"
    d = decide(m, rules, [Final(32, "full_batch", "tiled", 1.033, 1.017, 1.044, 12)])
    assert d.selected == "full_batch" and "tiled x1.033 [1.017, 1.044] (tied within the margin)" in d.finals_note


def test_a_tied_inconclusive_configuration_joins_the_finals_and_is_judged_there() -> None:
    """Issue 30 item 8: full_batch INCONCLUSIVE on a wide speedup interval (a bursty neighbour), tied with tiled on
    the ranking: it meets tiled in the finals; tied there, decision.prefer ships it, as a quiet sweep would."""
    from morphogen_exp.run import finals

    m = _matrix({"tiled": (146.0, 1.0), "full_batch": (145.5, 3.0)}, speedup_at_4={"full_batch": (1.05, 0.1)})
    rules = DecisionRules(prefer=PREFER)
    d = decide(m, rules)
    assert (d.selected, d.verdicts["full_batch"].status) == ("tiled", UNDECIDED)
    assert finals.plan(m.assign(config=m["our_strategy"]), d, rules)[32] == ["tiled", "full_batch"]
    d = decide(m, rules, [Final(32, "tiled", "full_batch", 1.001, 0.99, 1.012, 12)])
    assert d.selected == "full_batch" and d.verdicts["full_batch"].go and "is preferred to tiled" in d.finals_note
    d = decide(m, rules, [Final(32, "tiled", "full_batch", 1.168, 0.814, 1.327, 12)])  # undecided head to head: a tie
    assert d.selected == "full_batch"
    d = decide(m, rules, [Final(32, "tiled", "full_batch", 0.95, 0.94, 0.96, 12)])  # slower beyond the margin: out
    assert d.selected == "tiled" and d.verdicts["full_batch"].status == UNDECIDED
