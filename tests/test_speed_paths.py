"""The fast paths change nothing that matters: length-bucketed batches, histories cut to their
longest item, the dense rows taken on accelerators and under torch.compile, bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from camn.data.store import BUCKET_WINDOW, PreparedStore, batch_slices
from camn.models import layers
from camn.models.base import FeatureSpec
from camn.models.registry import build_model, model_entries
from camn.train.loop import ResidentSplit, StreamedSplit, positions_of_lengths

SPEC = FeatureSpec(("item", "category", "brand", "price"), (60, 6, 9, 12), 10)
LENGTHS = [0, 1, 3, 10, 2, 7, 5, 4]
# the package's models only: other test files register test-only models in the same registry
PACKAGE_MODELS = [
    name for name, entry in model_entries().items() if entry.cls.__module__.startswith("camn.")
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(lengths: list[int], length: int = SPEC.max_len) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    ids = torch.stack(
        [torch.randint(2, v, (len(lengths), length + 1), generator=g) for v in SPEC.vocab_sizes],
        -1,
    )
    return {
        "history": ids[:, :length] * mask[..., None],
        "history_negative": ids.flip(1)[:, :length] * mask[..., None],
        "mask": mask,
        "target": ids[:, length],
        "label": torch.tensor([float(i % 2) for i in range(len(lengths))]),
        "user": torch.arange(len(lengths)),
        "index": torch.arange(len(lengths)),
    }


def cut(batch: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    out = dict(batch)
    for key in ("history", "history_negative", "mask"):
        out[key] = batch[key][:, :length]
    return out


def test_length_buckets_visit_every_row_once_sorted_within_windows() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 21, size=1000)
    seen, batches = [], list(batch_slices(1000, 16, np.random.default_rng(1), lengths))
    for positions, keep in batches:
        assert keep == max(1, lengths[positions].max())
        seen += list(positions)
        window = positions[0] // (16 * BUCKET_WINDOW)
        assert (positions // (16 * BUCKET_WINDOW) == window).all()  # one window a batch
        assert (np.diff(lengths[positions]) >= 0).all()  # sorted by length inside it
    assert sorted(seen) == list(range(1000))
    assert len(batches) == 63  # ceil(1000 / 16): no batch is split by the bucketing
    plain = list(batch_slices(1000, 16, np.random.default_rng(1)))
    assert [(p.start, p.stop, k) for p, k in plain[:2]] == [(0, 16, None), (16, 32, None)]


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_cutting_histories_to_the_longest_changes_no_logit(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, SPEC).eval()
    batch = make_batch([1, 3, 2, 4])
    with torch.no_grad():
        full, short = model(batch), model(cut(batch, 4))
    torch.testing.assert_close(short.logits, full.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_dense_rows_equal_packed_rows(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows every model computes on accelerators and under torch.compile (all B * L
    positions, padding masked) give the CPU's packed-row results, loss and gradients too."""
    torch.manual_seed(0)
    model = build_model(name, SPEC).train()
    batch = make_batch(LENGTHS)

    def step() -> tuple[torch.Tensor, ...]:
        torch.manual_seed(1)  # models that draw random numbers draw the same ones
        output = model(batch, extra_losses=True)
        loss = output.logits.sum() + output.aux_loss
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad],
                                    allow_unused=True)
        kept = [g for g in grads if g is not None]
        return output.logits.detach(), output.aux_loss.detach(), *kept

    packed = step()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    dense = step()
    assert len(dense) == len(packed)
    for got, want in zip(dense, packed, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_bf16_autocast_stays_close_to_fp32(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, SPEC).eval()
    batch = make_batch(LENGTHS)
    with torch.no_grad():
        fp32 = torch.sigmoid(model(batch).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.sigmoid(model(batch).logits.float())
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.02  # bf16 keeps 8 bits of mantissa


@pytest.mark.parametrize("name", ["din", "dmin"])
def test_compiled_forward_has_no_graph_break_and_equals_eager(name: str) -> None:
    """torch.compile traces the whole scoring pass in one graph (``fullgraph``); the
    ``aot_eager`` backend checks the traced graph without the minutes of C++ code generation
    that inductor needs (benchmarks/throughput.py times the inductor build)."""
    torch.manual_seed(0)
    model = build_model(name, SPEC).eval()
    batch = make_batch(LENGTHS)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        want = model(batch).logits
        got = compiled(batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# one preset per model class (and each CAMN reading); DIEN's nn.GRU is a graph break in dynamo
COMPILE_CHECKED = ["wide-deep", "pnn", "din", "dien", "dhan", "mind", "comirec-sa", "dmin",
                   "camn", "camn-dense", "camn-tied", "camn-standalone"]


@pytest.mark.parametrize("name", COMPILE_CHECKED)
def test_every_model_compiles_and_scores_as_eager(name: str) -> None:
    """Dynamo's capture (the ``eager`` backend: no code generation) of each model's scoring
    pass gives eager's logits; one graph for every model but DIEN (its interest extractor is
    ``nn.GRU``, which dynamo does not trace in one graph)."""
    torch.manual_seed(0)
    model = build_model(name, SPEC).eval()
    batch = make_batch(LENGTHS)
    compiled = torch.compile(model, backend="eager", fullgraph=name != "dien", dynamic=True)
    with torch.no_grad():
        want = model(batch).logits
        got = compiled(batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compiled_training_pass_with_extra_losses_equals_eager() -> None:
    """The trainer's call under torch.compile (``TrainConfig.compile``): a training pass that
    asks for the extra losses (DMIN's next-click loss) gives eager's logits and loss."""
    torch.manual_seed(0)
    model = build_model("dmin", SPEC).train()
    batch = make_batch(LENGTHS)
    compiled = torch.compile(model, backend="eager", dynamic=True)  # dynamo's capture only
    state = {key: value.clone() for key, value in model.state_dict().items()}
    want = model(batch, extra_losses=True)
    model.load_state_dict(state)  # the batch norms' running statistics as before
    got = compiled(batch, extra_losses=True)
    assert want.aux_loss > 0
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.aux_loss, want.aux_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dmin", "camn", "camn-dense"])
def test_compiled_training_pass_on_handed_in_packed_rows_is_one_graph_equal_to_eager(
    name: str,
) -> None:
    """With ``layers.packed_positions`` in the batch (what the trainer hands a packing model
    on the CPU) the packed rows trace as one graph, the row count being an input's size, and
    the training pass (logits, next-click and diversity losses) equals eager's own packing."""
    torch.manual_seed(0)
    model = build_model(name, SPEC).train()
    batch = make_batch(LENGTHS)
    handed = batch | layers.packed_positions(batch["mask"])
    assert len(handed[layers.PACKED_ROWS]) == sum(LENGTHS)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    want = model(batch, extra_losses=True)
    model.load_state_dict(state)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    got = compiled(handed, extra_losses=True)
    assert want.aux_loss > 0
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.aux_loss, want.aux_loss, rtol=1e-5, atol=1e-6)


@given(st.lists(st.integers(0, 6), min_size=1, max_size=12), st.integers(6, 9))
@settings(max_examples=60, deadline=None)
def test_positions_from_host_lengths_equal_those_of_the_mask(
    lengths: list[int], width: int
) -> None:
    """What the trainer's batches carry (found from the host's lengths, no device work) is
    ``packed_positions`` of the batch's mask."""
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    found = positions_of_lengths(np.array(lengths), width)
    for key, value in layers.packed_positions(mask).items():
        assert torch.equal(found[key], value), key


@pytest.mark.parametrize("resident", [True, False])
@pytest.mark.parametrize("buckets", [False, True])
def test_training_batches_carry_their_packed_positions(
    serve_store, resident: bool, buckets: bool
) -> None:
    store = PreparedStore(serve_store)
    split = (ResidentSplit if resident else StreamedSplit)(store, "train", torch.device("cpu"))
    batches = list(split.batches(16, shuffle=True, seed=3, length_buckets=buckets,
                                 packed_rows=True))
    assert len(batches) > 2
    for batch in batches:
        for key, value in layers.packed_positions(batch["mask"]).items():
            assert torch.equal(batch[key], value), key
    plain = next(split.batches(16, shuffle=True, seed=3, length_buckets=buckets))
    assert layers.PACKED_ROWS not in plain
    assert torch.equal(plain["history"], batches[0]["history"])


def test_packed_positions_are_the_real_rows_and_their_next_click_pairs() -> None:
    mask = torch.tensor([[True, True, True, False], [False] * 4, [True, True, False, False]])
    handed = layers.packed_positions(mask)
    assert handed[layers.PACKED_ROWS].tolist() == [0, 1, 2, 8, 9]  # flat (sample, position)
    assert handed[layers.PACKED_PAIRS].tolist() == [0, 1, 3]  # packed rows whose next is real
    packing = layers.Packing.of({"mask": mask} | handed)
    assert not packing.dense and packing.next_pairs() is handed[layers.PACKED_PAIRS]


@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_bf16_is_refused_with_the_reason_where_the_cpu_emulates_it(
    command: str, tmp_path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from camn.cli import main
    from camn.train import precision

    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    store = tmp_path / "store"
    assert main(["prepare", "synthetic", "--out", str(store), "--users", "60", "--items",
                 "40"]) == 0
    capsys.readouterr()
    argv = [command, "--data", str(store), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--precision", "bf16", "--model" if command == "train" else "--models", "din"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "camn: error: --precision bf16: this CPU has no bf16 matrix instructions (AVX512-BF16 "
        "or AMX), so PyTorch would emulate bf16 products, about 100x slower than fp32; use "
        "--precision fp32 (the default) on this machine\n"
    )
    assert not (tmp_path / "out").exists()


def test_length_sorted_rows_are_packed_sequence_order_and_skip_empty_histories() -> None:
    """Lengths [2, 0, 3, 1] over L = 3: samples sorted longest first (2, 0, 3; 1 has no row),
    time-major, as nn.utils.rnn.pack_padded_sequence lays out the non-empty ones."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from camn.models.dien import LengthSortedRows

    lengths = torch.tensor([2, 0, 3, 1])
    mask = torch.arange(3)[None] < lengths[:, None]
    rows = LengthSortedRows(mask)
    assert rows.steps.tolist() == [3, 2, 1]
    assert rows.rows.tolist() == [2 * 3, 0, 3 * 3, 2 * 3 + 1, 1, 2 * 3 + 2]
    values = torch.arange(12.0).view(4, 3, 1)
    kept = lengths > 0
    reference = pack_padded_sequence(values[kept], lengths[kept], batch_first=True,
                                     enforce_sorted=False)
    torch.testing.assert_close(rows.pack(values).data, reference.data)
    torch.testing.assert_close(rows.unpack(rows.pack(values).data), values * mask[..., None])
    last = torch.tensor([[20.0], [21.0], [22.0]])  # one per sorted non-empty sample
    assert rows.unsort(last).squeeze(-1).tolist() == [21.0, 0.0, 20.0, 22.0]
