"""camn demo: arguments, the synthetic store, and the printed story (trainer stubbed)."""

from __future__ import annotations

import statistics

import pytest

from camn.cli import build_parser, main
from camn.config import Settings
from camn.data.raw import DataError
from camn.data.store import PreparedStore
from camn.experiments import benchmark, demo
from camn.experiments.benchmark import Run

CALLS: list[tuple[str, int]] = []
AUC = {"dmin": 0.70, "camn": 0.72, "camn-route": 0.71, "camn-loss": 0.705}
ROUTING = {"camn": {"overall": 0.61, "item": 0.72, "user": 0.50, "item_matched": 0.9,
                    "user_matched": 0.55},
           "camn-route": {"overall": 0.41, "item": 0.52, "user": 0.30, "item_matched": 0.8,
                          "user_matched": 0.35}}


def fake_auc(model: str, seed: int) -> float:
    return AUC[model] + seed * (0.001 if model == "camn" else 0.0005)


def fake_train(run: Run, settings: Settings) -> dict:
    CALLS.append((run.model, run.seed))
    result = {"test_auc": fake_auc(run.model, run.seed),
              "test_logloss": 0.6, "test_gauc": 0.65, "valid_auc": 0.7, "best_epoch": 1,
              "epochs": settings.config(run.store, run.model).epochs, "train_seconds": 1.0,
              "samples_per_second": 5000.0, "environment": {}}
    if run.model in ROUTING:
        result["routing_recovery"] = ROUTING[run.model]
    return result


def test_demo_arguments_resolve_to_time_saving_defaults(tmp_path):
    parser = build_parser("demo")
    args = parser.parse_args(["demo"])
    assert args.out == "camn-demo" and args.seeds is None and args.models is None
    resolved = demo.plan(args, demo.DEMO_DEFAULTS, demo.resolve_models, need_stores=False)
    assert resolved.seeds == [1, 2] and "camn" in resolved.models and resolved.stores == []
    config = resolved.settings.config(tmp_path / "store", "camn")
    assert (config.epochs, config.batch_size, config.patience) == (4, 256, 2)
    assert config.lr == 0.002  # TrainConfig's, below the demo's own layer
    args = parser.parse_args(["demo", "--seeds", "3", "--models", "camn", "--epochs", "1"])
    resolved = demo.plan(args, demo.DEMO_DEFAULTS, demo.resolve_models, need_stores=False)
    assert resolved.seeds == [1, 2, 3] and resolved.models == ["camn"]
    assert resolved.settings.config(tmp_path / "store", "camn").epochs == 1
    help_text = " ".join(parser._subparsers._group_actions[0].choices["demo"].format_help()
                         .split())
    assert "maximum epochs (default: 4)" in help_text and "(default: 256)" in help_text


def test_demo_prints_auc_verdict_and_routing_recovery_and_resumes(tmp_path, monkeypatch, capsys):
    CALLS.clear()
    monkeypatch.setattr(benchmark, "train_run", fake_train)
    argv = ["demo", "--out", str(tmp_path / "demo"), "--models", "camn,dmin,camn-route,camn-loss",
            "--jobs", "1"]
    assert main(argv) == 0
    assert sorted(CALLS) == sorted((m, s) for m in AUC for s in (1, 2))
    store = PreparedStore(tmp_path / "demo" / "data" / "synthetic-last")
    assert store.has_drivers and store.schema["splits"]["train"] == 9600
    printed = capsys.readouterr().out
    assert "Test AUC on synthetic-last (last)" in printed
    camn = [fake_auc("camn", s) for s in (1, 2)]
    assert f"CAMN        AUC {statistics.mean(camn):.4f} ± {statistics.stdev(camn):.4f}" in printed
    assert "CAMN vs DMIN: CAMN > DMIN by" in printed and "paired t-test over 2 seeds" in printed
    assert "chance 1/k = 1/5 = 0.20" in printed
    assert ("CAMN        overall 0.610   item-level 0.720   user-level 0.500   "
            "(best relabelling: item 0.900, user 0.550)") in printed
    assert "CAMN-route  overall 0.410" in printed
    assert "CAMN-loss   no router" in printed
    for term in ("routing recovery", "item-level", "user-level", "best relabelling"):
        assert [line for line in printed.splitlines() if line.startswith(f"- {term}: ")]
    assert (tmp_path / "demo" / "benchmark" / "table.md").is_file()
    CALLS.clear()
    assert main(argv) == 0
    assert CALLS == []  # everything was already in results.jsonl
    assert "CAMN        overall 0.610" in capsys.readouterr().out


def test_demo_refuses_unknown_models(tmp_path):
    with pytest.raises(DataError, match="unknown model"):
        demo.resolve_models("camn,nope")
