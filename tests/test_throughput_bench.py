"""benchmarks/throughput.py on a tiny synthetic store: its JSON document, FLOP counts, the
bf16 skip, store resolution and the camn / FuxiCTR ratios. No speed figure is asserted."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import generate
from camn.data.store import PreparedStore

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = ["--steps", "2", "--warmup", "1", "--threads", "1", "--batch-size", "64",
         "--eval-batch-size", "128", "--gemm-size", "64"]
PER_MODEL = ("samples_per_s", "inference_samples_per_s", "peak_rss_mib", "inference_peak_rss_mib",
             "gflop_per_sample", "inference_gflop_per_sample", "achieved_gflops")


@pytest.fixture(scope="module")
def throughput():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("throughput")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny"
    prepare(generate(users=80, items=40, seed=3), path, protocol="sliding", seed=3)
    return path


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def settings(throughput, store: Path, *extra: str) -> argparse.Namespace:
    return throughput.parse_args(["--store", str(store), *SMALL, *extra])


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_run_prints_a_table_then_the_json_document(throughput, store, capsys):
    assert throughput.main(["--store", str(store), "--models", "din", *SMALL]) == 0
    out = capsys.readouterr().out
    summary = last_json(out)
    assert "GEMM peak" in out.splitlines()[1] and "din" in out
    assert {"device", "threads", "precision", "batch_size", "roofline", *PER_MODEL} <= set(summary)
    assert (summary["device"], summary["threads"], summary["precision"]) == ("cpu", 1, "fp32")
    assert summary["batch_size"] == 64 and summary["steps"] == 2
    for key in PER_MODEL:
        assert list(summary[key]) == ["din"] and summary[key]["din"] > 0, key
    roofline = summary["roofline"]
    assert roofline["gemm_fp32_gflops"] > 0 and roofline["gemm_bf16_gflops"] > 0
    assert roofline["din"] == pytest.approx(
        summary["achieved_gflops"]["din"] / roofline["gemm_fp32_gflops"])
    assert summary["ratios"] == {}  # no FuxiCTR in this run


def test_training_and_inference_measure_the_trainers_steps(throughput, store):
    args = settings(throughput, store)
    tiny = PreparedStore(store)
    trained = throughput.measure_training(tiny, "dmin", {}, args)
    scored = throughput.measure_inference(tiny, "dmin", {}, args)
    assert (trained["steps"], trained["samples"]) == (2, 128)
    assert (scored["steps"], scored["samples"]) == (1, 128)  # as many samples as 2 x 64
    # backward costs about twice the forward pass: a training step's products exceed inference's
    assert trained["flop_per_sample"] > 2 * scored["flop_per_sample"] > 0
    assert trained["trainer_step"] == "run_epoch" and trained["peak_rss_mib"] > 0


def test_bf16_training_counts_the_same_products_as_fp32(throughput, store):
    tiny = PreparedStore(store)
    fp32 = throughput.measure_training(tiny, "din", {}, settings(throughput, store))
    bf16 = throughput.measure_training(
        tiny, "din", {}, settings(throughput, store, "--precision", "bf16"))
    assert bf16["flop_per_sample"] == fp32["flop_per_sample"] > 0  # same batch, same shapes
    assert bf16["loss"] != fp32["loss"]  # the products really ran in bf16 ...
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.05)  # ... on fp32 weights


def test_bf16_rows_are_skipped_where_the_cpu_emulates_bf16(throughput, store, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(throughput, "native_bf16", lambda device: False)
    assert throughput.main(["--store", str(store), *SMALL, "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    summary = last_json(out)
    assert "--force-bf16" in summary["skipped"] and summary["skipped"] in out
    assert summary["samples_per_s"] == {"din": None, "dmin": None, "camn": None}
    assert summary["roofline"]["gemm_bf16_emulated"] is True
    assert summary["roofline"]["gemm_bf16_size"] == 64  # the product is already small
    forced = settings(throughput, store, "--precision", "bf16", "--force-bf16")
    assert throughput.skip_reason(forced, torch.device("cpu")) is None


def test_ratios_divide_each_camn_model_by_each_fuxictr_model(throughput):
    speed = {"din": 300.0, "dmin": 50.0, "fuxictr_din": 100.0, "fuxictr_dmin": 25.0}
    assert throughput.ratios(speed) == {
        "din": {"fuxictr_din": 3.0, "fuxictr_dmin": 12.0},
        "dmin": {"fuxictr_din": 0.5, "fuxictr_dmin": 2.0},
    }
    assert throughput.ratios({"din": 300.0}) == {}


def test_without_store_or_raw_files_the_message_says_what_to_pass(throughput, tmp_path):
    with pytest.raises(DataError) as error:
        throughput.resolve_store(None, tmp_path / "data", prepared=(tmp_path / "none",),
                                 cache=tmp_path / "cache")
    message = str(error.value)
    assert "--store DIR" in message and "--data-root DIR" in message
    assert "reviews_Beauty_5.json.gz" in message and "meta_Beauty.json.gz" in message
    assert not (tmp_path / "cache").exists()


def test_the_first_prepared_store_is_used_when_none_is_given(throughput, store, tmp_path):
    found = throughput.resolve_store(None, tmp_path, prepared=(tmp_path / "none", store))
    assert found == store
    assert throughput.resolve_store(tmp_path / "mine", tmp_path) == tmp_path / "mine"


def test_bad_models_and_fuxictr_folders_are_named(throughput, tmp_path):
    with pytest.raises(DataError, match="unknown nope"):
        throughput.model_list("din,nope")
    with pytest.raises(DataError, match=r"no DIN/src/DIN\.py"):
        throughput.check_fuxictr(sys.executable, tmp_path)


def test_model_options_are_grouped_by_model_and_typed(throughput):
    items = ["camn:q=2", "dmin:aux_weight=0", "camn:heads=slot"]
    assert throughput.model_options(items, ["dmin", "camn"]) == {
        "camn": {"q": 2, "heads": "slot"}, "dmin": {"aux_weight": 0}}
    assert throughput.model_options(["q=2"], ["camn"]) == {"camn": {"q": 2}}  # every model's
    with pytest.raises(DataError, match="model 'din' has no option 'q'"):
        throughput.model_options(["q=2"], ["camn", "din"])
