"""camn benchmark: results.jsonl (and its CSV export), resume, Tables 2/3 with paired tests,
plot, parallel runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import statistics

import pytest
from scipy import stats

from camn.cli import build_parser, main
from camn.config import Settings
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import generate
from camn.experiments import benchmark
from camn.experiments.benchmark import Run, run_benchmark
from camn.experiments.tables import (
    PAPER_MODELS,
    ablation_rows,
    all_models,
    comparison_pairs,
    paired_test,
    paper_order,
    render_markdown,
)
from camn.models.registry import model_names
from camn.results import CSV_COLUMNS, HEALTH_METRICS, ResultsLog, RunResult, read_csv

# test AUC of each (model, seed): CAMN leads DMIN by about 0.0037 on every seed (significant);
# CAMN vs CAMN-route flips sign (not significant)
AUC = {
    ("camn", 1): 0.7380, ("camn", 2): 0.7372, ("camn", 3): 0.7385,
    ("dmin", 1): 0.7340, ("dmin", 2): 0.7338, ("dmin", 3): 0.7349,
    ("camn-route", 1): 0.7360, ("camn-route", 2): 0.7402, ("camn-route", 3): 0.7380,
}
MODELS = ["dmin", "camn-route", "camn"]
CALLS: list[tuple[str, int]] = []
ENVIRONMENT = {"camn": "test", "threads": 1}


def fake_train(run: Run, settings: Settings) -> dict:
    """A trainer stand-in: fixed numbers per (model, seed), routing recovery for routed models."""
    CALLS.append((run.model, run.seed))
    result = {
        "test_auc": AUC[(run.model, run.seed)], "test_logloss": 0.6 - run.seed / 100,
        "test_gauc": 0.7 + run.seed / 1000, "valid_auc": 0.74, "best_epoch": run.seed,
        "epochs": run.seed + settings.config(run.store, run.model).patience,
        "train_seconds": 2.0 * run.seed, "samples_per_second": 1000.0 * run.seed,
        "history": [{"ignored": True}], "environment": ENVIRONMENT,
    }
    if run.model.startswith("camn"):
        result["routing_recovery"] = {"overall": 0.5, "item": 0.6, "user": 0.4,
                                      "item_matched": 0.7, "user_matched": 0.45}
    return result


def failing_train(run: Run, settings: Settings) -> dict:
    if run.model == "dmin" and run.seed == 2:
        raise RuntimeError("out of memory")
    return fake_train(run, settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny"
    prepare(generate(users=80, items=40, seed=3), path, protocol="last", seed=3)
    return path


@pytest.fixture
def stub(monkeypatch):
    CALLS.clear()
    monkeypatch.setattr(benchmark, "train_run", fake_train)
    return CALLS


def quick(store, out, seeds=(1, 2, 3), models=MODELS, **kwargs):
    return run_benchmark([store], models, list(seeds), out, Settings(epochs=2, patience=1),
                         command="camn benchmark --test", log=lambda _: None, **kwargs)


def result(dataset: str, model: str, seed: int, test_auc: float) -> RunResult:
    return RunResult(dataset, model, seed, test_auc, 0.5, 0.7, 0.7, 1, 2, 1.0, 100.0)


def test_results_jsonl_has_one_result_per_run_and_csv_exports_them(store, tmp_path, stub):
    outcome = quick(store, tmp_path / "out")
    assert len(stub) == 9 and not outcome.failures
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 9
    first = json.loads(lines[0])
    assert (first["dataset"], first["model"], first["seed"]) == ("tiny (last)", "dmin", 1)
    assert first["environment"] == ENVIRONMENT and first["store"] == str(store)
    assert first["config"]["epochs"] == 2 and first["config"]["patience"] == 1
    assert first["config"]["options"]["embed_dim"] == 18  # every option, resolved
    assert ResultsLog(tmp_path / "out" / "results.jsonl").load() == outcome.rows
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["model"], int(r["seed"])) for r in rows] == [
        (m, s) for s in (1, 2, 3) for m in ("dmin", "camn-route", "camn")
    ]  # dataset, seed, model order: complete seeds first
    first = rows[0]
    assert first["dataset"] == "tiny (last)"
    assert float(first["test_auc"]) == AUC[("dmin", 1)]
    assert first["routing_overall"] == ""  # DMIN has no router
    camn = next(r for r in rows if r["model"] == "camn")
    assert (camn["routing_overall"], camn["routing_item"], camn["routing_user"]) == (
        "0.5", "0.6", "0.4")
    assert int(camn["epochs"]) == 1 + 1  # seed 1 + patience 1


def test_resume_skips_finished_runs_and_drops_a_half_written_line(store, tmp_path, stub):
    out = tmp_path / "out"
    quick(store, out, seeds=(1, 2))
    assert len(stub) == 6
    with (out / "results.jsonl").open("a") as handle:
        handle.write('{"dataset": "tiny (last)", "model": "camn", "seed": 3, "test_a')  # killed
    stub.clear()
    outcome = quick(store, out, seeds=(1, 2, 3))
    assert stub == [("dmin", 3), ("camn-route", 3), ("camn", 3)]
    assert len(outcome.rows) == 9
    stub.clear()
    quick(store, out, seeds=(1, 2, 3))
    assert stub == []
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line)["test_auc"] > 0.7 for line in lines)
    assert len((out / "results.csv").read_text().splitlines()) == 10


def test_resume_refuses_other_training_settings(store, tmp_path, stub):
    quick(store, tmp_path / "out", seeds=(1,))
    before = (tmp_path / "out" / "results.jsonl").read_bytes()
    with pytest.raises(DataError, match=r"runs of dmin on tiny \(last\) made with other "
                       r"training settings \(epochs 2 -> 3\)"):
        run_benchmark([store], MODELS, [1], tmp_path / "out", Settings(epochs=3, patience=1),
                      log=lambda _: None)
    with pytest.raises(DataError, match=r"options.q None -> 1"):
        run_benchmark([store], MODELS, [1], tmp_path / "out",
                      Settings(epochs=2, patience=1, options={"camn": {"q": 1}}),
                      log=lambda _: None)
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == before
    # the device may change (a resumed benchmark on another machine); a new model may join
    stub.clear()
    run_benchmark([store], [*MODELS, "camn-loss"], [1], tmp_path / "out",
                  Settings(epochs=2, patience=1, device="cpu"), log=lambda _: None)
    assert stub == [("camn-loss", 1)]


def test_a_failed_run_is_reported_and_retried_later(store, tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "train_run", failing_train)
    outcome = quick(store, tmp_path / "out")
    assert [(r.model, r.seed) for r, _ in outcome.failures] == [("dmin", 2)]
    assert "out of memory" in outcome.failures[0][1]
    assert len(outcome.rows) == 8
    CALLS.clear()
    monkeypatch.setattr(benchmark, "train_run", fake_train)
    quick(store, tmp_path / "out")
    assert CALLS == [("dmin", 2)]


def test_table_md_has_tables_bold_best_and_hand_checked_paired_test(store, tmp_path, stub):
    outcome = quick(store, tmp_path / "out")
    text = (tmp_path / "out" / "table.md").read_text()
    assert "camn benchmark --test" in text
    assert "## Table 2" in text and "## Table 3" in text
    table2 = text.split("## Table 2")[1].split("##")[0]
    table3 = text.split("## Table 3")[1].split("##")[0]
    camn_mean = statistics.mean(AUC[("camn", s)] for s in (1, 2, 3))
    camn_std = statistics.stdev(AUC[("camn", s)] for s in (1, 2, 3))
    assert f"| CAMN | **{camn_mean:.4f} ± {camn_std:.4f}** |" in table2
    assert "CAMN-route" not in table2 and "| DMIN | 0.7342" in table2
    route_mean = statistics.mean(AUC[("camn-route", s)] for s in (1, 2, 3))
    assert f"| CAMN-route | **{route_mean:.4f}" in table3  # CAMN-route is best in Table 3

    diffs = [AUC[("camn", s)] - AUC[("dmin", s)] for s in (1, 2, 3)]
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    t = mean / (std / math.sqrt(3))
    p = 2 * stats.t.sf(abs(t), df=2)
    verdict = f"CAMN > DMIN by {mean:.4f} ± {std:.4f} (paired t-test over 3 seeds, p = {p:.2g})"
    assert verdict in text
    assert f"| {t:.2f} |" in text
    test = paired_test(outcome.rows, "tiny (last)", "camn", "dmin")
    assert test is not None and test.significant and test.exceeds_spread
    assert test.p == pytest.approx(p) and test.t == pytest.approx(t)
    route = paired_test(outcome.rows, "tiny (last)", "camn", "camn-route")
    assert route is not None and not route.significant
    assert "no significant difference (CAMN − CAMN-route" in text
    assert "## gAUC and log loss" in text and "## Training speed" in text
    assert "2,000/s" in text  # DMIN's mean samples/s: (1000 + 2000 + 3000) / 3
    assert "0.500 / 0.600 / 0.400" in text and "chance 1/5 = 0.20" in text

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    cell = summary["datasets"]["tiny (last)"]["models"]["camn"]["test_auc"]
    assert cell["mean"] == pytest.approx(camn_mean) and len(cell["runs"]) == 3
    assert cell["std"] == pytest.approx(camn_std)
    configs = summary["datasets"]["tiny (last)"]["configs"]
    assert set(configs) == set(MODELS) and configs["camn"]["epochs"] == 2
    assert summary["datasets"]["tiny (last)"]["paired_tests"]["camn vs dmin"]["p"] == (
        pytest.approx(p))
    assert (tmp_path / "out" / "auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verdicts_for_degenerate_cases():
    rows = [result("d", m, s, v) for m, s, v in [("camn", 1, 0.70), ("dmin", 1, 0.69),
                                                 ("camn", 2, 0.71), ("dmin", 2, 0.70)]]
    assert "zero spread" in paired_test(rows, "d", "camn", "dmin").verdict()
    assert "too few" in paired_test(rows[:2], "d", "camn", "dmin").verdict()
    assert paired_test(rows, "d", "camn", "mind") is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [('{"dataset": "d", "model": "camn", "seed": 1, "test_a', "Unterminated string"),
     ('{"dataset": "d", "model": "camn", "seed": 1}', "missing key(s) ['test_auc'"),
     ("[1, 2]", "expected a JSON object, got list")],
)
def test_results_log_names_a_damaged_middle_line(tmp_path, line, reason):
    path = tmp_path / "results.jsonl"
    log = ResultsLog(path)
    log.append(result("d", "dmin", 1, 0.7))
    with path.open("a") as handle:
        handle.write(line + "\n")
    log.append(result("d", "dmin", 2, 0.7))
    before = path.read_bytes()
    message = f"results.jsonl:2: not a camn run result ({reason}"
    with pytest.raises(DataError, match=re.escape(message)):
        log.load()
    assert path.read_bytes() == before  # reading repairs nothing


def test_results_log_round_trips_nan_as_null_and_keeps_the_first_of_a_key(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    undefined = RunResult("d", "camn", 1, math.nan, 0.5, 0.7, 0.7, 1, 2, 1.0, 100.0,
                          routing={"overall": 0.25}, config={"lr": 0.002})
    log.append(undefined)
    log.append(result("d", "camn", 1, 0.9))  # the same run again: the first one counts
    assert '"test_auc": null' in log.path.read_text()
    (loaded,) = log.load()
    assert math.isnan(loaded.test_auc) and loaded.routing == {"overall": 0.25}
    assert loaded.config == {"lr": 0.002} and loaded.metric("routing_overall") == 0.25


def test_all_runs_the_papers_models_and_table3_groups_each_camn_family():
    registered = ["camn-standalone", "dmin", "camn-dense-loss", "camn", "camn-route", "camn-loss",
                  "camn-dense", "camn-standalone-route"]
    assert all_models(registered) == ["dmin", "camn-loss", "camn-route", "camn"]
    everything = benchmark.resolve_models("all")
    assert everything == list(PAPER_MODELS) and set(everything) <= set(model_names())
    assert "camn-dense" in benchmark.resolve_models("camn-dense,dmin")
    assert ablation_rows(paper_order(registered)) == [
        "camn-loss", "camn-route", "camn", "camn-dense-loss", "camn-dense",
        "camn-standalone-route", "camn-standalone"]
    assert {("camn", "camn-loss"), ("camn-dense", "dmin"), ("camn-dense", "camn-dense-route"),
            ("camn-standalone", "camn-standalone-loss"), ("camn-tied", "camn")
            } <= set(comparison_pairs())
    rows = [result("d", m, s, 0.7 + 0.01 * i + 0.001 * s)
            for i, m in enumerate(["dmin", "camn-dense-loss", "camn-dense"]) for s in (1, 2)]
    text = render_markdown(rows, datasets=["d"], models=["dmin", "camn-dense-loss", "camn-dense"],
                           seeds=[1, 2], meta={"d": {"num_slots": 3, "train": 1, "valid": 1,
                                                     "test": 1}}, command="c",
                           settings={"every run": {}})
    table2, table3 = text.split("## Table 3")[0], text.split("## Table 3")[1].split("##")[0]
    assert "CAMN-dense-loss" not in table2 and "| CAMN-dense " in table2
    assert "CAMN-dense-loss" in table3 and "| CAMN-dense " in table3
    assert "CAMN-dense − DMIN" in text and "CAMN-dense − CAMN-dense-loss" in text


def test_cli_arguments_parse_to_none_where_not_given():
    args = build_parser("benchmark").parse_args(
        ["benchmark", "--data", "a", "b", "--models", "camn,dmin", "--seeds", "3", "--out", "o",
         "--option", "camn:q=2", "--jobs", "2", "--lr", "0.01", "--no-compile"])
    assert args.data == ["a", "b"] and args.seeds == 3 and args.jobs == 2 and args.lr == 0.01
    assert args.seed is None and args.epochs is None and args.batch_size is None
    assert args.compile is False and args.length_buckets is None
    assert args.option == ["camn:q=2"] and args.config is None


def test_unknown_model_is_refused(store, tmp_path):
    assert main(["benchmark", "--data", str(store), "--models", "camn,nope", "--out",
                 str(tmp_path / "o")]) == 2


def test_real_trainer_end_to_end_and_parallel_identical(store, tmp_path, capsys):
    pytest.importorskip("camn.train.loop")
    common = ["--data", str(store), "--seeds", "1", "--epochs", "1", "--batch-size", "64",
              "--threads", "1"]
    assert main(["benchmark", *common, "--models", "din", "--out", str(tmp_path / "seq"),
                 "--keep-runs"]) == 0
    printed = capsys.readouterr().out
    assert "## Table 2" in printed and "--threads 1" in printed
    assert (tmp_path / "seq" / "auc.png").is_file()
    assert any((tmp_path / "seq" / "runs" / "tiny.last" / "din" / "seed1").iterdir())
    # DIN again, next to CAMN, in two spawned processes: the same numbers as sequentially
    assert main(["benchmark", *common, "--models", "din,camn", "--jobs", "2",
                 "--out", str(tmp_path / "par")]) == 0
    seq = ResultsLog(tmp_path / "seq" / "results.jsonl").load()
    par = {r.model: r for r in ResultsLog(tmp_path / "par" / "results.jsonl").load()}
    assert len(seq) == 1 and set(par) == {"din", "camn"}
    assert all(0 <= r.test_auc <= 1 for r in par.values())
    assert par["camn"].routing is not None and par["din"].routing is None
    keys = ("test_auc", "test_logloss", "test_gauc", "valid_auc", "best_epoch", "config")
    assert [getattr(seq[0], k) for k in keys] == [getattr(par["din"], k) for k in keys]
    for row in (seq[0], *par.values()):
        assert row.environment["threads"] == 1 and row.environment["device"] == "cpu"
        assert row.environment["precision"] == "fp32" and row.environment["camn"]
    exported = read_csv(tmp_path / "par" / "results.csv")
    logged = ResultsLog(tmp_path / "par" / "results.jsonl").load()
    assert [RunResult(**{**vars(r), "attention": None}) for r in exported] == [
        RunResult(**{**vars(r), "store": "", "config": {}, "environment": {}, "attention": None})
        for r in logged]
    assert logged[1].attention is not None  # camn's test-split attention health, per head
    for name in HEALTH_METRICS:  # the CSV keeps its means over heads
        assert [r.metric(name) or math.nan for r in exported] == pytest.approx(
            [r.metric(name) or math.nan for r in logged], nan_ok=True)


def test_csv_tables_of_an_older_version_load_with_the_new_columns_empty(tmp_path) -> None:
    old_columns = CSV_COLUMNS[: CSV_COLUMNS.index("routing_item_matched")]
    path = tmp_path / "results.csv"
    values = ["beauty (last)", "camn", "1", "0.8", "0.5", "0.79", "0.81", "2", "4", "3.0", "900",
              "0.5", "0.6", "0.4"]
    path.write_text(",".join(old_columns) + "\n" + ",".join(values) + "\n")
    (row,) = read_csv(path)
    assert row.test_auc == 0.8 and row.seed == 1 and row.epochs == 4
    assert row.routing == {"overall": 0.5, "item": 0.6, "user": 0.4}
    assert row.metric("routing_item_matched") is None


def test_a_benchmark_folder_of_an_older_version_is_refused(store, tmp_path, stub):
    out = tmp_path / "out"
    out.mkdir()
    (out / "benchmark.json").write_text(json.dumps({"settings": {"epochs": 2}}))
    (out / "results.csv").write_text(",".join(CSV_COLUMNS) + "\n")
    with pytest.raises(DataError, match=r"holds a results\.csv of an earlier camn version"):
        quick(store, out)
    assert stub == []


def test_a_store_without_user_level_clicks_gives_null_recovery_not_a_crash(tmp_path):
    """Every click item-level: the user-level recovery is undefined (NaN), written as null in
    results.jsonl and summary.json (strict JSON) and read back as NaN."""
    store = tmp_path / "items-only"
    raw = generate(users=80, items=100, item_share=1.0, item_driver="category", follow=0.8, seed=3)
    prepare(raw, store, protocol="last", seed=3)
    out = tmp_path / "out"
    assert main(["benchmark", "--data", str(store), "--models", "camn", "--seeds", "1",
                 "--epochs", "1", "--batch-size", "64", "--threads", "1", "--device", "cpu",
                 "--option", "camn:embed_dim=4", "--out", str(out)]) == 0

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))

    (line,) = (out / "results.jsonl").read_text().splitlines()
    routing = strict(line)["routing"]
    assert routing["user"] is None and routing["user_matched"] is None
    assert 0 <= routing["item"] <= 1
    strict((out / "summary.json").read_text())
    (row,) = ResultsLog(out / "results.jsonl").load()
    assert math.isnan(row.routing["user"]) and row.routing["item"] == routing["item"]


def test_display_names_and_ablations_come_from_the_registry(monkeypatch):
    """A base name's own ``display``, a preset's derived from its class's base name, an unknown
    name as given; each model's ablations as registered, and an ``ablation_of`` that names no
    model is an error that names both."""
    from camn.models import registry

    shown = {name: registry.display_name(name) for name in (
        "wide-deep", "comirec-sa-paper", "camn", "camn-dense-route", "camn-standalone-loss",
        "not-a-model")}
    assert shown == {"wide-deep": "Wide&Deep", "comirec-sa-paper": "ComiRec-SA-paper",
                     "camn": "CAMN", "camn-dense-route": "CAMN-dense-route",
                     "camn-standalone-loss": "CAMN-standalone-loss", "not-a-model": "not-a-model"}
    families = registry.ablations()
    assert families["camn"] == ["camn-loss", "camn-route"]
    assert families["camn-dense"] == ["camn-dense-loss", "camn-dense-route"]
    assert "camn-tied" not in {m for names in families.values() for m in names}
    entry = registry.get_entry("camn-route")
    monkeypatch.setitem(registry._MODELS, "camn-orphan", dataclasses.replace(
        entry, name="camn-orphan", ablation_of="camn-gone"))
    with pytest.raises(ValueError, match=r"'camn-orphan'.*'camn-gone'"):
        registry.ablations()
