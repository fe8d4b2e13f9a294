"""Options are checked before any work: model ``--option`` values against the model's signature
and declared domains, numeric command-line options at argument parsing (issue 8, item 4).

Every case runs ``camn`` in-process and asserts the message (the option named, the reason given)
and that nothing was written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camn.cli import main
from camn.data.prepare import prepare
from camn.data.raw import DataError
from camn.data.sources.synthetic import generate
from camn.models.base import CTRModel, FeatureSpec
from camn.models.registry import (
    DOMAINS,
    at_least,
    check_options,
    model_entries,
    option_domains,
    option_types,
    register,
    resolved_options,
)

SEED_RANGE = "argument --seed: must be an integer in [0, 9223372036854775807]"
K = 5  # attributes of the synthetic store (item id + 4)
SPEC = FeatureSpec(("item_id", "a", "b", "c", "d"), (30, 8, 8, 8, 8), 10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options") / "store"
    prepare(generate(users=60, items=40, attributes=K, seed=3), path, max_len=10, seed=3)
    return path


def parse_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run ``camn argv``, expecting argparse to stop it (exit 2); returns its stderr."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------ model options (camn train)

MODEL_OPTIONS = [
    ("camn", "alpha=x", "option alpha=x: expected a float, got the string 'x'"),
    ("camn", "alpha=NaN", "option alpha=NaN: expected a float, got the non-finite number NaN"),
    ("camn", "alpha=1e999", "option alpha=Infinity: expected a float, got the non-finite"),
    ("camn", "alpha=-1", "option alpha=-1: must be at least 0"),
    ("camn", "embed_dim=-4", "option embed_dim=-4: must be at least 1"),
    ("camn", "embed_dim=0", "option embed_dim=0: must be at least 1"),
    ("camn", "embed_dim=8.5", "option embed_dim=8.5: expected an integer, got the number 8.5"),
    ("camn", "q=0", "option q=0: must be between 1 and k = 5"),
    ("camn", "q=9", "option q=9: must be between 1 and k = 5 (k: the store's number of"),
    ("camn", "q=2.5", "option q=2.5: expected an integer or null, got the number 2.5"),
    ("camn", "routing=1", "option routing=1: expected true or false, got the number 1"),
    ("camn", "routing=yes", "option routing=yes: expected true or false, got the string 'yes'"),
    ("camn", "mlp_hidden=200,80",
     "option mlp_hidden=200,80: expected a list of integers such as [200, 80], got the string"),
    ("camn", 'mlp_hidden=[200,"x"]', 'expected a list of integers such as [200, 80], got the '
     'list [200, "x"]'),
    ("camn", "mlp_hidden=[200,0]",
     "option mlp_hidden=[200, 0]: every layer width must be at least 1"),
    ("camn-standalone", "scale_side=3", "option scale_side=3: expected a string, got the number"),
    ("camn-standalone", "scale_side=both", "model 'camn-standalone' (options given: "
     "scale_side=both): scale_side must be 'key' or 'query'"),
    ("camn", "heads=both", "model 'camn' (options given: heads=both): heads must be 'dense' or "
     "'slot'"),
    ("camn", "activation=tanh", "unknown activation 'tanh'; choose dice, prelu, relu or sigmoid"),
    ("camn", "nope=1", "model 'camn' has no option 'nope'; it takes activation, alpha,"),
    ("camn-route", "q=6", "model 'camn-route': option q=6: must be between 1 and k = 5"),
    ("dmin", "refiner_heads=0", "model 'dmin': option refiner_heads=0: must be at least 1"),
    ("dmin", "aux_weight=-0.5", "model 'dmin': option aux_weight=-0.5: must be at least 0"),
    ("dien", "aux_hidden=[-1]", "model 'dien': option aux_hidden=[-1]: every layer width"),
    ("mind", "init_std=0", "model 'mind': option init_std=0: must be above 0"),
    ("mind", "iterations=0", "model 'mind': option iterations=0: must be at least 1"),
    ("mind", "interest_dim=0", "model 'mind': option interest_dim=0: must be at least 1"),
    ("mind", "pow_p=0.5", "model 'mind' (options given: pow_p=0.5): pow_p must be a non-negative "
     "integer"),
    ("comirec-sa", "num_interests=0", "model 'comirec-sa': option num_interests=0: must be at"),
    ("comirec-sa", "hidden_factor=0", "model 'comirec-sa': option hidden_factor=0: must be at"),
    ("dhan", "group_slot=5", "model 'dhan': option group_slot=5: must be between 0 and k - 1 = 4"),
    ("dhan", "group_slot=-1", "model 'dhan': option group_slot=-1: must be between 0 and k - 1"),
    ("wide-deep", "cross_buckets=-1", "model 'wide-deep': option cross_buckets=-1: must be at"),
    ("pnn", "history_pool=max", "model 'pnn' (options given: history_pool=max): history_pool "
     "must be one of"),
]


@pytest.mark.parametrize(("model", "option", "message"), MODEL_OPTIONS)
def test_train_checks_every_model_option_before_training(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, model: str, option: str,
    message: str,
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(store), "--model", model, "--out", str(out), "--device", "cpu",
            "--option", option, "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("camn: error: ") and message in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not out.exists()


def test_every_bad_option_is_named_in_one_message(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(store), "--model", "camn", "--out", str(out),
            "--option", "alpha=x", "--option", "embed_dim=-4", "--option", "q=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("model 'camn': option alpha=x: expected a float, got the string 'x'; "
            "option embed_dim=-4: must be at least 1\n") in err
    assert "q=2" not in err
    assert not out.exists()


SYNTAX = "expected [MODEL:]KEY=VALUE, e.g. q=2 or camn:q=2"


@pytest.mark.parametrize(
    ("option", "message"),
    [("embed_dim", f"--option 'embed_dim': {SYNTAX}"),
     ("=3", f"--option '=3': {SYNTAX}"),
     ("camn:=3", f"--option 'camn:=3': {SYNTAX}"),
     ("dmin:q=2", "--option 'dmin:q=2' is for model 'dmin', which is not run (camn)")],
)
def test_train_option_without_key_or_value(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, option: str, message: str
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(store), "--model", "camn", "--out", str(out), "--option", option]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_train_model_lists_the_registered_ones(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(store), "--model", "camm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'camm'; registered: " in err
    listed = err.split("registered: ")[1].strip().split(", ")
    assert set(listed) == set(model_entries()) and "camn" in listed
    assert not out.exists()


# ----------------------------------------------------------- model options (camn benchmark/demo)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("camn:alpha=x", "model 'camn': option alpha=x: expected a float, got the string 'x'"),
        ("camn:embed_dim=-4", "model 'camn': option embed_dim=-4: must be at least 1"),
        ("camn:nope=1", "model 'camn' has no option 'nope'"),
        ("nope=1", "model 'camn' has no option 'nope'"),  # without MODEL: every model's
        ("dmin:refiner_heads=0", "is for model 'dmin', which is not run (camn)"),
        ("q", f"--option 'q': {SYNTAX}"),
        # what only the store rules out, checked on every store before the first run
        ("camn:q=9", "model 'camn': option q=9: must be between 1 and k = 5"),
        ("camn:heads=both", "heads must be 'dense' or 'slot', got 'both'"),
    ],
)
def test_benchmark_checks_model_options_before_any_run(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, option: str, message: str
) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(store), "--models", "camn", "--out", str(out),
            "--seeds", "1", "--epochs", "1", "--device", "cpu", "--option", option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if option in {"camn:q=9", "camn:heads=both"}:
        assert f"store {store}: " in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["benchmark", "demo"])
def test_unknown_benchmark_model_lists_the_registered_ones(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str
) -> None:
    out = tmp_path / "bench"
    data = ["--data", str(store)] if command == "benchmark" else []
    assert main([command, *data, "--models", "camn,dinn", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown model(s) dinn; registered: " in err
    assert set(err.split("registered: ")[1].strip().split(", ")) == set(model_entries())
    assert not out.exists()


def test_demo_checks_model_options_before_preparing_data(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--option", "camn:alpha=x"]) == 2
    assert "model 'camn': option alpha=x: expected a float" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------ numeric options at argument parsing

TRAINING_NUMBERS = [
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got 'inf'"),
    (["--lr=-inf"], "argument --lr: must be a finite number, got '-inf'"),
    (["--lr", "0"], "argument --lr: must be a number above 0, got '0'"),
    (["--lr", "-0.01"], "argument --lr: must be a number above 0, got '-0.01'"),
    (["--lr", "fast"], "argument --lr: must be a number, got 'fast'"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got '0'"),
    (["--epochs", "2.5"], "argument --epochs: must be an integer, got '2.5'"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got '0'"),
    (["--batch-size", "-256"], "argument --batch-size: must be at least 1, got '-256'"),
    (["--eval-batch-size", "0"], "argument --eval-batch-size: must be at least 1, got '0'"),
    (["--patience", "0"], "argument --patience: must be at least 1, got '0'"),
    (["--seeds", "0"], "argument --seeds: must be at least 1, got '0'"),
    (["--seed", "-1"], SEED_RANGE + ", got '-1'"),
    (["--seed", str(2**64)], SEED_RANGE),
    (["--weight-decay", "-0.1"], "argument --weight-decay: must be at least 0, got '-0.1'"),
    (["--clip-grad", "nan"], "argument --clip-grad: must be a finite number, got 'nan'"),
    (["--monitor", "loss"], "argument --monitor: invalid choice: 'loss' (choose from"),
]


@pytest.mark.parametrize(("extra", "message"), TRAINING_NUMBERS)
def test_train_numbers_are_checked_at_parsing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(store), "--model", "camn", "--out", str(out), *extra]
    assert f"camn train: error: {message}" in parse_error(argv, capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [*TRAINING_NUMBERS,
     (["--jobs", "0"], "argument --jobs: must be at least 1, got '0'"),
     (["--threads", "0"], "argument --threads: must be at least 1, got '0'"),
     (["--threads", "-2"], "argument --threads: must be at least 1, got '-2'")],
)
@pytest.mark.parametrize("command", ["benchmark", "demo"])
def test_benchmark_and_demo_numbers_are_checked_at_parsing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, command: str, extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    data = ["--data", str(store)] if command == "benchmark" else []
    argv = [command, *data, "--models", "camn", "--out", str(out), *extra]
    assert f"camn {command}: error: {message}" in parse_error(argv, capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--limit", "0"], "argument --limit: must be at least 1, got '0'"),
     (["--limit", "-3"], "argument --limit: must be at least 1, got '-3'"),
     (["--limit", "all"], "argument --limit: must be an integer, got 'all'"),
     (["--seed", "-1"], SEED_RANGE + ", got '-1'")],
)
def test_explain_numbers_are_checked_at_parsing(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = ["explain", "--run", str(tmp_path / "no-run"), "--data", str(store), *extra]
    assert f"camn explain: error: {message}" in parse_error(argv, capsys)


PREPARE_NUMBERS = [
    (["--max-len", "0"], "argument --max-len: must be at least 1, got '0'"),
    (["--max-len", "-5"], "argument --max-len: must be at least 1, got '-5'"),
    (["--seed", "-1"], SEED_RANGE + ", got '-1'"),
]


@pytest.mark.parametrize(("extra", "message"), PREPARE_NUMBERS)
def test_prepare_amazon_max_len_is_checked_before_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    reviews, meta = tmp_path / "reviews.json", tmp_path / "meta.json"
    reviews.write_text('{"reviewerID": "u", "asin": "i", "unixReviewTime": 1}\n')
    meta.write_text('{"asin": "i", "categories": [["c"]]}\n')
    before = {p: p.read_bytes() for p in (reviews, meta)}
    out = tmp_path / "store"
    argv = ["prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta),
            "--out", str(out), *extra]
    assert f"camn prepare amazon: error: {message}" in parse_error(argv, capsys)
    assert not out.exists()
    assert {p: p.read_bytes() for p in (reviews, meta)} == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [*PREPARE_NUMBERS,
     (["--users", "0"], "argument --users: must be at least 1, got '0'"),
     (["--items", "-10"], "argument --items: must be at least 1, got '-10'"),
     (["--attributes", "1"], "argument --attributes: must be at least 2, got '1'"),
     (["--clicks-per-user", "2"], "argument --clicks-per-user: must be at least 3, got '2'"),
     (["--clicks-per-user", "nan"], "argument --clicks-per-user: must be a finite number"),
     (["--item-share", "1.5"], "argument --item-share: must be a number in [0, 1], got '1.5'"),
     (["--item-share", "nan"], "argument --item-share: must be a finite number, got 'nan'"),
     (["--salient-share", "-0.1"], "argument --salient-share: must be a number in [0, 1]"),
     (["--skew", "0"], "argument --skew: must be a number above 0, got '0'"),
     (["--skew", "inf"], "argument --skew: must be a finite number, got 'inf'"),
     (["--liked", "0"], "argument --liked: must be at least 1, got '0'"),
     (["--liked-items", "0"], "argument --liked-items: must be at least 1, got '0'"),
     (["--salient", "0"], "argument --salient: must be at least 1, got '0'")],
)
def test_prepare_synthetic_numbers_are_checked_at_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    out = tmp_path / "store"
    argv = ["prepare", "synthetic", "--out", str(out), *extra]
    assert f"camn prepare synthetic: error: {message}" in parse_error(argv, capsys)
    assert not out.exists()


# ------------------------------------------------------------------- the registry's checks itself


@pytest.mark.parametrize("name", sorted(model_entries()))
def test_every_model_accepts_its_own_defaults_as_json(name: str) -> None:
    """The checks refuse nothing a model takes: its defaults, through a JSON round trip."""
    given_options = json.loads(json.dumps(resolved_options(name)))
    assert check_options(name, given_options, SPEC) == given_options


def test_numbers_of_the_right_kind_pass_and_ints_count_as_floats() -> None:
    options = {"q": K, "alpha": 1, "embed_dim": 4, "mlp_hidden": [16, 8], "heads": "slot"}
    assert check_options("camn", options, SPEC) == {**resolved_options("camn"), **options}


def test_an_empty_layer_list_is_a_valid_network() -> None:
    assert check_options("dmin", {"attention_hidden": []}, SPEC)["attention_hidden"] == []


def test_store_bounds_are_checked_only_with_a_store() -> None:
    assert check_options("camn", {"q": 9})["q"] == 9  # k unknown: no upper bound yet
    with pytest.raises(DataError, match=r"option q=9: must be between 1 and k = 5"):
        check_options("camn", {"q": 9}, SPEC)


def test_every_numeric_option_of_the_package_models_has_a_domain() -> None:
    """A new int/float option must declare its range (DOMAINS, or its class's
    option_domains); no entry of DOMAINS is left unused."""
    numeric = {int, float, int | None, float | None}
    used = set()
    for name, entry in model_entries().items():
        if not entry.cls.__module__.startswith("camn.models."):
            continue  # models that tests register
        for key, hint in option_types(name).items():
            used.add(key)
            sequence = str(hint).startswith("collections.abc.Sequence")
            if hint in numeric or sequence:
                assert key in option_domains(name), f"{name}: option {key} has no domain"
    assert set(DOMAINS) <= used


class Untyped(CTRModel):
    """Test-only model without usable annotations: types come from the defaults."""

    def __init__(self, spec, embed_dim=4, scale: Missing = 0.5, sizes=(3, 2)) -> None:  # noqa: F821
        super().__init__(spec, embed_dim)
        self.scale, self.sizes = scale, sizes


UNTYPED = "untyped-options-test"
if UNTYPED not in model_entries():
    register(UNTYPED)(Untyped)


class OwnDomains(CTRModel):
    """Test-only model with an option of its own, its domain declared in its own class."""

    option_domains: ClassVar = {"depth": at_least(2)}

    def __init__(self, spec, embed_dim: int = 4, depth: int = 3) -> None:
        super().__init__(spec, embed_dim)
        self.depth = depth


OWN_DOMAINS = "own-domains-options-test"
if OWN_DOMAINS not in model_entries():
    register(OWN_DOMAINS)(OwnDomains)


def test_a_model_declares_the_domain_of_its_own_option_in_its_class() -> None:
    assert "depth" not in DOMAINS and option_domains(OWN_DOMAINS)["depth"] is not None
    with pytest.raises(DataError, match=f"model '{OWN_DOMAINS}': option depth=1: must be at "
                                        "least 2"):
        check_options(OWN_DOMAINS, {"depth": 1})
    assert check_options(OWN_DOMAINS, {"depth": 2})["depth"] == 2
    with pytest.raises(DataError, match="option embed_dim=0: must be at least 1"):
        check_options(OWN_DOMAINS, {"embed_dim": 0})  # the shared names' domains still hold


@pytest.mark.parametrize(
    ("options", "message"),
    [({"embed_dim": "4"}, "option embed_dim=4: expected an integer, got the string '4'"),
     ({"scale": "half"}, "option scale=half: expected a float, got the string 'half'"),
     ({"sizes": [1, 2.5]}, "option sizes=[1, 2.5]: expected a list of integers such as [3, 2]")],
)
def test_types_come_from_defaults_where_annotations_do_not_resolve(
    options: dict, message: str
) -> None:
    assert option_types(UNTYPED) == {"embed_dim": int, "scale": float, "sizes": Sequence[int]}
    with pytest.raises(DataError, match=f"model '{UNTYPED}': " + message.replace("[", r"\[")):
        check_options(UNTYPED, options, SPEC)
    assert check_options(UNTYPED, {"scale": 2, "sizes": [5]}, SPEC)["sizes"] == [5]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=60, deadline=None)
@given(value=JSON)
def test_any_json_value_is_accepted_or_refused_with_a_data_error(value: object) -> None:
    """No value leaks another exception; a float option takes exactly the finite numbers >= 0."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        check_options("camn", {"alpha": value}, SPEC)
    except DataError as error:
        assert str(error).startswith("model 'camn': option alpha=")
        assert not (is_number and math.isfinite(value) and value >= 0)
    else:
        assert is_number and math.isfinite(value) and value >= 0
