"""Attention health travels from the trainer's test terms into results and tables."""

from __future__ import annotations

import json
import math

import pytest

from camn.experiments.tables import health_table, render_markdown, summarize
from camn.results import (
    HEALTH_METRICS,
    RunResult,
    health_of_terms,
    mean_health,
    read_csv,
    write_csv,
)

TERMS = {"attention_entropy": [0.9, 0.5, math.nan], "attention_abs_logit": [0.2, 0.4, 0.6],
         "diversity": 0.125, "next_click": 0.3}


def metrics(seed: int, terms: dict | None = None) -> dict:
    base = {"seed": seed, "test_auc": 0.7, "test_logloss": 0.6, "test_gauc": 0.7,
            "valid_auc": 0.71, "best_epoch": 1, "epochs": 2, "train_seconds": 1.0,
            "samples_per_second": 10.0}
    return base if terms is None else {**base, "test_terms": terms}


def run(seed: int, terms: dict | None = None, model: str = "camn") -> RunResult:
    return RunResult.from_metrics(metrics(seed, terms), dataset="d (last)", store="d",
                                  model=model, config={}, environment={})


def test_health_is_picked_from_the_terms_with_nan_heads_as_null():
    health = health_of_terms(TERMS)
    assert health == {"entropy": [0.9, 0.5, None], "abs_logit": [0.2, 0.4, 0.6],
                      "diversity": 0.125}
    assert health_of_terms({"next_click": 0.3}) is None  # a model without attention heads


def test_run_result_keeps_health_through_json_and_reports_head_means():
    result = run(1, TERMS)
    text = json.dumps(result.to_dict(), allow_nan=False)  # no NaN in the JSON
    again = RunResult.from_dict(json.loads(text))
    assert again.attention == result.attention
    assert again.metric("attention_entropy") == pytest.approx(0.7)  # NaN head left out
    assert again.metric("attention_abs_logit") == pytest.approx(0.4)
    assert again.metric("attention_diversity") == 0.125
    assert run(1).metric("attention_entropy") is None


@pytest.mark.parametrize("bad", [{"entropy": "high"}, {"colour": [1.0]}, [0.5],
                                 {"diversity": [0.1]}, {"abs_logit": [True]}])
def test_damaged_health_in_a_result_line_is_refused(bad):
    data = run(1, TERMS).to_dict() | {"attention": bad}
    with pytest.raises(ValueError, match="attention"):
        RunResult.from_dict(data)


def test_seed_means_are_per_head_and_skip_missing_heads():
    other = {"entropy": [0.7, None, None], "abs_logit": [0.4, 0.6, 0.8], "diversity": 0.375}
    mean = mean_health([health_of_terms(TERMS), other])
    assert mean["entropy"][:2] == pytest.approx([0.8, 0.5]) and mean["entropy"][2] is None
    assert mean["abs_logit"] == pytest.approx([0.3, 0.5, 0.7])
    assert mean["diversity"] == pytest.approx(0.25)


def test_csv_export_keeps_the_head_means(tmp_path):
    rows = [run(1, TERMS), run(1, model="din")]
    again = read_csv(write_csv(rows, tmp_path / "results.csv"))
    for name in HEALTH_METRICS:
        assert again[0].metric(name) == pytest.approx(rows[0].metric(name))
    assert again[1].attention is None


def test_table_shows_health_only_for_models_that_report_it():
    rows = [run(1, TERMS), run(2, {**TERMS, "diversity": 0.375}), run(1, model="din")]
    summary = summarize(rows, HEALTH_METRICS)
    lines = health_table(summary, ["d (last)"], ["camn"])
    assert lines[-1] == "| CAMN | 0.700 / 0.400 / 0.250 |"
    markdown = render_markdown(rows, datasets=["d (last)"], models=["din", "camn"], seeds=[1, 2],
                               meta={"d (last)": {"num_slots": 3, "train": 1, "valid": 1,
                                                  "test": 1}},
                               command="camn benchmark", settings={})
    section = markdown.split("## Attention health")[1]
    assert "| CAMN | 0.700 / 0.400 / 0.250 |" in section and "DIN" not in section
