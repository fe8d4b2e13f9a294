"""Side features: user, context and numeric features into every model's output network, and
multi-valued attributes (bags) mean-pooled into their slot; without them, every model as before."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from camn.models import FeatureSpec, build_model
from camn.models.layers import UNKNOWN_ID, AttributeEmbedding
from camn.models.registry import model_entries

PLAIN = FeatureSpec(("item", "category", "brand", "price"), (30, 6, 9, 12), 6)
SIDE = FeatureSpec(
    ("item", "category", "genres", "price"), (30, 6, 9, 12), 6,
    user_features=("age", "gender"), user_feature_sizes=(5, 4),
    context_features=("hour",), context_sizes=(26,),
    numeric_features=("price_z", "length_z"),
    bag_slots=(2,), bag_lengths=(3,),
)
SIDE_KEYS = ("user_features", "context", "numeric")
LENGTHS = [0, 1, 3, 6, 2, 5]
# the package's models only: other test files register test-only models in the same registry
PACKAGE_MODELS = [
    name for name, entry in model_entries().items() if entry.cls.__module__.startswith("camn.")
]
# state_dict of every model on PLAIN as it was before side features existed: (entries, total
# size, sha256 of its "key:shape" lines); a deliberate change of a model updates its row
STATE_BEFORE = {
    "camn": (62, 426612, "bd69f2e0cb9a"),
    "camn-dense": (63, 438492, "85dfd929be41"),
    "camn-dense-loss": (60, 438060, "0c35e14ecc15"),
    "camn-dense-route": (63, 438492, "85dfd929be41"),
    "camn-loss": (59, 426180, "19b83d07f553"),
    "camn-route": (62, 426612, "bd69f2e0cb9a"),
    "camn-standalone": (39, 125454, "1063e8aec264"),
    "camn-standalone-loss": (36, 125022, "5144904f3f7b"),
    "camn-standalone-paper": (39, 96078, "9f4acc2858f0"),
    "camn-standalone-paper-loss": (36, 95646, "ff9e8ca71902"),
    "camn-standalone-paper-route": (39, 96078, "9f4acc2858f0"),
    "camn-standalone-residual": (43, 125526, "e2f92c0a9724"),
    "camn-standalone-route": (39, 125454, "1063e8aec264"),
    "camn-tied": (66, 443749, "351752621e76"),
    "comirec-sa": (25, 99594, "a6474d8157c3"),
    "comirec-sa-paper": (19, 69656, "f89c7f8bdb5f"),
    "dhan": (32, 144472, "b8b01c005fb4"),
    "dien": (47, 191889, "5738d6962403"),
    "din": (26, 103383, "2a32bcaf708c"),
    "din-paper": (26, 74007, "3716f8e062a5"),
    "dmin": (60, 438060, "0c35e14ecc15"),
    "mind": (24, 87446, "9b5b20a7b612"),
    "mind-paper": (18, 57508, "0a46297acd37"),
    "pnn": (12, 52476, "59c03df090b6"),
    "wide-deep": (16, 46883, "691403fad15c"),
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(spec: FeatureSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-aligned histories of LENGTHS, and every side feature the spec declares."""
    g = torch.Generator().manual_seed(seed)
    size, length = len(LENGTHS), spec.max_len
    mask = torch.arange(length)[None] < torch.tensor(LENGTHS)[:, None]
    ids = torch.stack(
        [torch.randint(2, v, (size, length + 1), generator=g) for v in spec.vocab_sizes], -1
    )
    batch = {
        "history": ids[:, :length] * mask[..., None],
        "history_negative": ids.flip(1)[:, :length] * mask[..., None],
        "mask": mask,
        "target": ids[:, length],
        "label": torch.tensor([float(i % 2) for i in range(size)]),
    }
    sides = ((SIDE_KEYS[0], spec.user_feature_sizes), (SIDE_KEYS[1], spec.context_sizes))
    for key, sizes in sides:
        if sizes:
            batch[key] = torch.stack([torch.randint(1, n, (size,), generator=g) for n in sizes], 1)
    if spec.numeric_features:
        batch[SIDE_KEYS[2]] = torch.randn(size, len(spec.numeric_features), generator=g)
    return batch


def bag_table(spec: FeatureSpec, slot: int, seed: int = 0) -> torch.Tensor:
    """Random bags of every real item, some empty, 0-padded at random places; padding and
    unknown items (ids 0, 1) empty."""
    g = torch.Generator().manual_seed(seed)
    shape = (spec.vocab_sizes[0], spec.bag_lengths[spec.bag_slots.index(slot)])
    values = torch.randint(2, spec.vocab_sizes[slot], shape, generator=g)
    values = values * (torch.rand(shape, generator=g) < 0.6)
    values[:2] = 0
    values[5] = 0  # item 5: an empty bag
    return values


def side_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, SIDE)
    for slot in SIDE.bag_slots:
        model.embedding.set_bags(slot, bag_table(SIDE, slot))
    return model


def with_side(batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """``batch`` with other user, context and numeric features (the same items)."""
    other = make_batch(SIDE, seed)
    return batch | {key: other[key] for key in SIDE_KEYS}


def state_shape(model: torch.nn.Module) -> tuple[int, int, str]:
    state = model.state_dict()
    text = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in state.items())
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return len(state), sum(value.numel() for value in state.values()), digest


# --------------------------------------------------------------------- without side features


@pytest.mark.parametrize("name", [name for name in STATE_BEFORE if name in PACKAGE_MODELS])
def test_without_side_features_every_model_has_the_state_it_had(name: str) -> None:
    model = build_model(name, PLAIN)
    assert state_shape(model) == STATE_BEFORE[name], (
        f"{name}: state_dict (entries, size, key:shape digest) on a spec without side features "
        "differs from the one before side features existed"
    )
    assert model.side_features(make_batch(PLAIN)) is None
    assert not any("side" in key or "bags" in key for key in model.state_dict())


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_side_features_add_parameters_after_the_old_ones_leaving_them_as_they_were(
    name: str,
) -> None:
    """The same seed draws the same initial values for every parameter the model has without
    side features (the new ones are drawn after all of them), and the new ones are the side
    embeddings, the head's side block and the bags (a buffer of the embedding)."""
    torch.manual_seed(0)
    plain = build_model(name, PLAIN).state_dict()
    torch.manual_seed(0)
    side = build_model(name, SIDE).state_dict()
    for key, value in plain.items():
        assert torch.equal(side[key], value), f"{name}: {key} drew other initial values"
    head_norm = ["head.side_norm.weight", "head.side_norm.bias", "head.side_norm.running_mean",
                 "head.side_norm.running_var", "head.side_norm.num_batches_tracked"]
    assert sorted(set(side) - set(plain)) == sorted([
        "embedding.bags_2", "side_inputs.embedding.table.weight", "head.side_input.weight",
        *(head_norm if "head.net.0.running_mean" in plain else []),
    ])
    assert side["side_inputs.embedding.table.weight"].shape == (5 + 4 + 26, 18)
    assert side["head.side_input.weight"].shape == (200, 3 * 18 + 2)  # (U + C) d + N inputs
    assert side["embedding.bags_2"].shape == (30, 3)
    assert not side["embedding.bags_2"].any()  # zeros until set_bags


# -------------------------------------------------------------------------- FeatureSpec


def test_feature_spec_round_trips_and_old_schemas_load() -> None:
    assert FeatureSpec.from_schema(SIDE.to_dict()) == SIDE
    old = {"attributes": ["item", "category"], "vocab_sizes": [10, 4], "max_len": 5}
    spec = FeatureSpec.from_schema(old)
    assert spec == FeatureSpec(("item", "category"), (10, 4), 5)
    assert not spec.has_side_features and spec.bag_slots == ()
    assert spec.to_dict() == old  # a spec without side fields writes what it always wrote
    bags_only = FeatureSpec(("item", "genres"), (10, 4), 5, bag_slots=(1,), bag_lengths=(2,))
    assert bags_only.to_dict() == old | {"attributes": ["item", "genres"], "bag_slots": [1],
                                         "bag_lengths": [2]}
    assert not bags_only.has_side_features


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_features": ("age",)}, "user_features ['age'] and user_feature_sizes []"),
        ({"context_features": ("hour",), "context_sizes": (1,)}, "at least 2"),
        ({"bag_slots": (0,), "bag_lengths": (2,)}, "slot 0 is the item id"),
        ({"bag_slots": (2,), "bag_lengths": (2,)}, "in [1, 2)"),
        ({"bag_slots": (1, 1), "bag_lengths": (2, 2)}, "distinct"),
        ({"bag_slots": (1,), "bag_lengths": ()}, "differ in length"),
        ({"bag_slots": (1,), "bag_lengths": (0,)}, "at least 1"),
    ],
)
def test_feature_spec_refuses_inconsistent_side_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match="FeatureSpec") as error:
        FeatureSpec(("item", "genres"), (10, 4), 5, **fields)
    assert message in str(error.value)


# ------------------------------------------------------------------------------------ bags


def small_bags() -> AttributeEmbedding:
    torch.manual_seed(0)
    embedding = AttributeEmbedding((6, 5, 7), 3, bag_slots=(2,), bag_lengths=(3,))
    # item 2: values 3, 5; item 3: value 4 between paddings; item 4: empty; 5: 6, 6, 2
    embedding.set_bags(2, torch.tensor(
        [[0, 0, 0], [0, 0, 0], [3, 5, 0], [0, 4, 0], [0, 0, 0], [6, 6, 2]]
    ))
    return embedding


def test_bag_vector_is_the_mean_of_its_values_padding_ignored() -> None:
    embedding = small_bags()
    values = embedding.table.weight[11:]  # slot 2's table: offset 6 + 5
    ids = torch.tensor([[2, 3, 1], [3, 1, 6], [5, 2, 0], [4, 4, 4], [1, 2, 2], [0, 0, 0]])
    got = embedding(ids)  # (6, 3, d)
    torch.testing.assert_close(got[0, 2], (values[3] + values[5]) / 2, rtol=0, atol=0)
    torch.testing.assert_close(got[1, 2], values[4], rtol=0, atol=0)  # padding on either side
    torch.testing.assert_close(got[2, 2], (2 * values[6] + values[2]) / 3)
    torch.testing.assert_close(got[3, 2], values[UNKNOWN_ID])  # empty bag: the unknown value
    torch.testing.assert_close(got[4, 2], values[UNKNOWN_ID])  # the unknown item's bag
    assert not got[5].any()  # the padding item: zeros in every slot
    torch.testing.assert_close(got[:, :2], embedding.table(ids[:, :2] + torch.tensor([0, 6]))
                               * (ids[:, :2] != 0)[..., None])  # other slots as before


def test_bag_gradients_reach_the_bag_values_only() -> None:
    embedding = small_bags()
    embedding(torch.tensor([[2, 3, 1]])).sum().backward()
    rows = embedding.table.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist()
    assert rows == [2, 9, 14, 16]  # item 2, category 3 (6 + 3), bag values 3 and 5 (11 + v)


@pytest.mark.parametrize(
    ("slot", "bags", "message"),
    [
        (1, torch.zeros(6, 3, dtype=torch.long), "slot 1 is not a bag slot"),
        (2, torch.zeros(6, 2, dtype=torch.long), r"shape \(6, 3\) .*, got torch.int64 \(6, 2\)"),
        (2, torch.zeros(6, 3), "integer ids"),
        (2, torch.full((6, 3), 7), r"\[0, 7\)"),
        (2, torch.full((6, 3), -1), r"\[0, 7\)"),
    ],
)
def test_set_bags_refuses_a_table_that_does_not_fit(
    slot: int, bags: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        small_bags().set_bags(slot, bags)


def test_bags_are_saved_with_the_weights_and_load_by_shape(tmp_path) -> None:
    model = side_model("dmin")
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    torch.manual_seed(1)
    fresh = build_model("dmin", SIDE)
    fresh.load_state_dict(load_file(tmp_path / "weights.safetensors"))
    assert torch.equal(fresh.embedding.bags_2, bag_table(SIDE, 2))
    batch = make_batch(SIDE)
    torch.testing.assert_close(fresh.eval()(batch).logits, model.eval()(batch).logits)


def test_dhan_refuses_to_group_by_a_bag_slot() -> None:
    spec = FeatureSpec(("item", "genres"), (10, 4), 5, bag_slots=(1,), bag_lengths=(2,))
    with pytest.raises(ValueError, match="group_slot 1 is a bag slot"):
        build_model("dhan", spec)


# ------------------------------------------------------------- every model with side features


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_every_model_reads_side_features_and_not_the_bag_column(name: str) -> None:
    model = side_model(name).train()
    batch = make_batch(SIDE)
    output = model(batch, extra_losses=True)
    assert output.logits.shape == (len(LENGTHS),) and output.logits.isfinite().all()
    (output.logits.sum() + output.aux_loss).backward()
    for key in ("side_inputs.embedding.table.weight", "head.side_input.weight"):
        grad = model.get_parameter(key).grad
        assert grad is not None and grad.abs().sum() > 0, f"{name}: no gradient reaches {key}"
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
        assert not torch.allclose(model(with_side(batch, 1)).logits, logits), (
            f"{name}: the logits do not depend on the user, context and numeric features"
        )
        scrambled = dict(batch)
        for key in ("history", "target", "history_negative"):
            noise = torch.randint(0, 100, batch[key].shape[:-1])
            scrambled[key] = batch[key].clone()
            scrambled[key][..., 2] = noise  # the bag slot's column: not read
        torch.testing.assert_close(model(scrambled).logits, logits, rtol=0, atol=0)


def test_a_missing_side_feature_is_named() -> None:
    model = side_model("din").eval()
    batch = make_batch(SIDE)
    del batch["context"]
    with pytest.raises(ValueError, match=r"batch\['context'\] of shape \(B, 1\), the features "
                                         r"\['hour'\]; got no such key"):
        model(batch)
    numeric = make_batch(SIDE) | {"numeric": torch.zeros(len(LENGTHS), 3)}
    with pytest.raises(ValueError, match=r"got shape \(6, 3\)"):
        model(numeric)


@pytest.mark.parametrize("name", ["camn", "camn-dense", "camn-standalone"])
def test_camn_routing_reads_item_attributes_only(name: str) -> None:
    model = side_model(name).eval()
    batch = make_batch(SIDE)
    with torch.no_grad():
        output, other = model(batch), model(with_side(batch, 1))
    assert output.routing.shape == (len(LENGTHS), SIDE.max_len, SIDE.num_slots)
    torch.testing.assert_close(other.routing, output.routing, rtol=0, atol=0)
    assert not torch.allclose(other.logits, output.logits)


@pytest.mark.parametrize("name", ["dmin", "camn", "camn-dense"])
def test_dense_rows_equal_packed_rows_with_side_features(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = side_model(name).train()
    batch = make_batch(SIDE)

    def step() -> tuple[torch.Tensor, ...]:
        output = model(batch, extra_losses=True)
        loss = output.logits.sum() + output.aux_loss
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        return output.logits.detach(), output.aux_loss.detach(), *(
            g for g in grads if g is not None
        )

    packed = step()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    dense = step()
    assert len(dense) == len(packed)
    for got, want in zip(dense, packed, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_side_features_and_bags_compile_in_one_graph() -> None:
    """``--compile`` traces the side features and the bag lookups without a graph break."""
    model = side_model("camn").eval()
    batch = make_batch(SIDE)
    compiled = torch.compile(model, backend="eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch).logits, model(batch).logits,
                                   rtol=1e-5, atol=1e-6)
