"""MIND, ComiRec-SA, PNN and Wide&Deep: shapes, masks, equations against naive loops, gradients,
and learning a planted signal."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from camn.models.base import FeatureSpec
from camn.models.layers import field_embeddings, label_aware_attention, pool_history
from camn.models.mind import adaptive_interest_count, squash
from camn.models.registry import build_model, model_names, resolved_options
from camn.models.wide_deep import cross_bucket

NAMES = ("mind", "comirec-sa", "pnn", "wide-deep")
VARIANTS = [
    ("mind", {}),
    ("mind", {"routing_init": "random", "adaptive_interests": True, "detach_routing": False}),
    ("mind", {"interest_dim": 24, "pow_p": 2, "capsule_relu": False, "num_interests": 2}),
    ("mind", {"readout": "hard"}),
    ("mind-paper", {}),
    ("comirec-sa", {}),
    ("comirec-sa", {"positional": False, "hidden_factor": 2, "num_interests": 3}),
    ("comirec-sa-paper", {}),
    ("pnn", {}),
    ("pnn", {"history_pool": "mean"}),
    ("wide-deep", {}),
    ("wide-deep", {"cross_buckets": 64, "history_pool": "mean", "match_cross": False}),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(VARIANTS)]
SPECS = [
    FeatureSpec(("item", "category", "brand"), (50, 6, 9), 8),
    FeatureSpec(("item", "cat2", "cat3", "leaf", "brand", "price"), (50, 5, 7, 9, 12, 12), 20),
]


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and a busy machine does not oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(spec: FeatureSpec, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-aligned histories of the given lengths: real ids >= 2, padding 0."""
    g = torch.Generator().manual_seed(seed)
    size, length = len(lengths), spec.max_len
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    columns = [torch.randint(2, v, (size, length + 1), generator=g) for v in spec.vocab_sizes]
    ids = torch.stack(columns, dim=-1)  # (B, L + 1, k)
    return {
        "history": ids[:, :length] * mask[..., None],
        "mask": mask,
        "target": ids[:, length],
        "label": torch.randint(0, 2, (size,), generator=g).float(),
        "user": torch.arange(size),
        "index": torch.arange(size),
    }


def varied_lengths(spec: FeatureSpec, size: int = 24) -> list[int]:
    return [1, spec.max_len, *torch.randint(1, spec.max_len + 1, (size - 2,)).tolist()]


def scramble_padding(batch: dict[str, torch.Tensor], spec: FeatureSpec) -> dict:
    """The same batch with other valid ids (>= 1) at every padded position."""
    g = torch.Generator().manual_seed(99)
    noise = torch.stack(
        [torch.randint(1, v, batch["mask"].shape, generator=g) for v in spec.vocab_sizes], -1
    )
    history = torch.where(batch["mask"][..., None], batch["history"], noise)
    return {**batch, "history": history}


def test_registered_with_json_options() -> None:
    assert set(NAMES) <= set(model_names())
    for name in NAMES:
        options = json.loads(json.dumps(resolved_options(name)))  # a JSON config round trip
        assert options["embed_dim"] == 18 and options["mlp_hidden"] == [200, 80]
        build_model(name, SPECS[0], **options)


@pytest.mark.parametrize("spec", SPECS, ids=["k3", "k6"])
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_output_shape_finite_and_padding_invariant(name, options, spec) -> None:
    torch.manual_seed(0)
    model = build_model(name, spec, **options)
    batch = make_batch(spec, [0, *varied_lengths(spec, 15)])
    model.train()
    out = model(batch, extra_losses=True)  # asked, a model without extra losses gives 0
    assert out.logits.shape == (16,) and torch.isfinite(out.logits).all()
    assert out.aux_loss.shape == () and out.aux_loss.item() == 0 and out.routing is None
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
        torch.testing.assert_close(model(batch).logits, logits)  # deterministic in eval
        torch.testing.assert_close(model(scramble_padding(batch, spec)).logits, logits)


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(name, options) -> None:
    torch.manual_seed(0)
    spec = SPECS[1]
    model = build_model(name, spec, **options).train()
    batch = make_batch(spec, varied_lengths(spec, 64), seed=1)
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["label"])
    loss.backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None, key
        assert torch.isfinite(parameter.grad).all(), key
        assert parameter.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_are_refused(name) -> None:
    bad = {
        "mind": [{"routing_init": "zeros"}, {"pow_p": 0.5}, {"readout": "max"}],
        "comirec-sa": [{"readout": "max"}],
        "pnn": [{"history_pool": "max"}],
        "wide-deep": [{"history_pool": "max"}, {"cross_buckets": -1}],
    }[name]
    for options in bad:
        with pytest.raises(ValueError):
            build_model(name, SPECS[0], **options)


@pytest.mark.parametrize("name", ["mind", "comirec-sa"])
def test_default_head_is_dmins_and_the_paper_preset_reads_target_and_user_vector(
    name: str,
) -> None:
    """Default: [target, summed history, target * summed, user vector], Dice, as every
    sequence model. ``-paper``: [target, user vector], PReLU."""
    spec = SPECS[0]
    width = spec.num_slots * 18
    torch.manual_seed(0)
    default = build_model(name, spec)
    assert default.head.net[0].num_features == 4 * width
    assert type(default.head.net[2]).__name__ == "Dice"
    torch.manual_seed(0)
    paper = build_model(f"{name}-paper", spec).eval()
    assert paper.head.net[0].num_features == 2 * width
    assert isinstance(paper.head.net[2], torch.nn.PReLU)
    batch = make_batch(spec, varied_lengths(spec, 8))
    history, target = paper.embed(batch)
    items, target = history.flatten(2), target.flatten(1)
    with torch.no_grad():
        if name == "mind":
            capsules, _, valid = paper.routing(items, batch["mask"])[:3]
            user, _ = label_aware_attention(paper.capsule_layer(capsules), target, valid=valid)
        else:
            user, _ = label_aware_attention(paper.interests(items, batch["mask"]), target)
        expected = paper.head.net(torch.cat([target, user], dim=-1)).squeeze(-1)
        torch.testing.assert_close(paper(batch).logits, expected)


# --- MIND ---------------------------------------------------------------------------------


def test_squash_keeps_direction_and_maps_norm_below_one() -> None:
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.1, 0.0]])
    out = squash(z)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]) * 25 / 26)
    torch.testing.assert_close(out[1], torch.zeros(2))
    torch.testing.assert_close(out[2], torch.tensor([0.01 / 1.01, 0.0]))


def test_adaptive_interest_count_is_log2_of_length_clamped() -> None:
    lengths = torch.tensor([0, 1, 2, 3, 4, 7, 8, 20])
    assert adaptive_interest_count(lengths, 4).tolist() == [1, 1, 1, 1, 2, 2, 3, 4]


def test_label_aware_attention_powers_and_hard_readout() -> None:
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]])  # (1, 3, 2)
    target = torch.tensor([[1.0, 1.0]])
    scores = torch.tensor([1.0, 2.0, -2.0])
    for p in (0, 1, 2):
        out, weights = label_aware_attention(interests, target, pow_p=p)
        torch.testing.assert_close(weights[0], torch.softmax(scores**p, 0))
        torch.testing.assert_close(out[0], weights[0] @ interests[0])
    out, weights = label_aware_attention(interests, target, hard=True)
    assert weights[0].tolist() == [0, 1, 0] and out[0].tolist() == [0.0, 2.0]
    valid = torch.tensor([[True, False, True]])
    _, weights = label_aware_attention(interests, target, valid=valid)
    torch.testing.assert_close(weights[0], torch.softmax(torch.tensor([1.0, -9e9, -2.0]), 0))
    _, weights = label_aware_attention(interests, target, hard=True, valid=valid)
    assert weights[0].tolist() == [1, 0, 0]


def naive_routing(mapped: torch.Tensor, initial: torch.Tensor, iterations: int) -> torch.Tensor:
    """Algorithm 1 of MIND for one user, behaviour by behaviour: mapped (l, D') = S c_i,
    initial (l, K) -> capsules (K, D')."""
    logits = initial.clone()
    count, width = initial.shape[1], mapped.shape[1]
    for _ in range(iterations):
        capsules = []
        for j in range(count):
            z = torch.zeros(width)
            for i in range(len(mapped)):
                w_ij = torch.exp(logits[i, j]) / torch.exp(logits[i]).sum()
                z = z + w_ij * mapped[i]
            capsules.append(z.norm() ** 2 / (1 + z.norm() ** 2) * z / z.norm())
        for i in range(len(mapped)):
            for j in range(count):
                logits[i, j] = logits[i, j] + capsules[j] @ mapped[i]
    return torch.stack(capsules)


@pytest.mark.parametrize("adaptive", [False, True])
def test_mind_routing_matches_algorithm_1_and_masks_padding(adaptive) -> None:
    torch.manual_seed(0)
    spec = SPECS[0]
    model = build_model("mind", spec, adaptive_interests=adaptive, num_interests=3).eval()
    lengths = [1, 2, 4, 5, 8]
    batch = make_batch(spec, lengths)
    items = model.embedding(batch["history"]).flatten(2) * 20  # larger norms: squash non-trivial
    capsules, coupling, valid = model.routing(items, batch["mask"])[:3]
    assert capsules.shape == (5, 3, spec.num_slots * 18) and coupling.shape == (5, 8, 3)
    real = batch["mask"]
    torch.testing.assert_close(coupling.sum(-1)[real], torch.ones(int(real.sum())))
    assert torch.all(coupling[~real] == 0)
    assert torch.all(coupling[~valid[:, None, :].expand_as(coupling)] == 0)
    assert torch.all(capsules.norm(dim=-1) < 1)
    assert capsules.norm(dim=-1).max() > 0.3  # the squash is not in its linear regime
    mapped = model.bilinear(items)
    counts = adaptive_interest_count(torch.tensor(lengths), 3) if adaptive else [3] * 5
    for b, length in enumerate(lengths):
        count = int(counts[b])
        initial = model.initial_logits[:length, :count]
        expected = naive_routing(mapped[b, :length], initial, 3)
        torch.testing.assert_close(capsules[b, :count], expected, atol=1e-5, rtol=1e-4)
        assert torch.all(capsules[b, count:] == 0)


def test_mind_random_routing_init_is_redrawn_in_training_only() -> None:
    torch.manual_seed(0)
    spec = SPECS[0]
    model = build_model("mind", spec, routing_init="random")
    batch = make_batch(spec, varied_lengths(spec, 16))
    items = model.embedding(batch["history"]).flatten(2) * 20
    first, _, _ = model.train().routing(items, batch["mask"])[:3]
    second, _, _ = model.routing(items, batch["mask"])[:3]
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model.routing(items, batch["mask"])[0],
                               model.routing(items, batch["mask"])[0])
    assert "initial_logits" in model.state_dict()


# --- ComiRec-SA ---------------------------------------------------------------------------


def test_comirec_attention_rows_and_interests() -> None:
    torch.manual_seed(0)
    spec = SPECS[1]
    model = build_model("comirec-sa", spec).eval()
    batch = make_batch(spec, [1, 3, 20, 7])
    items = model.embedding(batch["history"]).flatten(2)  # (B, L, D)
    attention = model.attention(items, batch["mask"])  # (B, K, L)
    assert attention.shape == (4, 6, 20)
    torch.testing.assert_close(attention.sum(-1), torch.ones(4, 6))
    assert torch.all(attention.transpose(1, 2)[~batch["mask"]] == 0)
    b, length = 3, 7
    keys = items[b, :length] + model.position[:length]
    logits = model.heads.weight @ torch.tanh(model.hidden(keys)).T + model.heads.bias[:, None]
    torch.testing.assert_close(attention[b, :, :length], torch.softmax(logits, dim=-1))
    interests = model.interests(items, batch["mask"])
    torch.testing.assert_close(interests[b], attention[b, :, :length] @ items[b, :length])


# --- PNN and Wide&Deep --------------------------------------------------------------------


def test_fields_pool_only_real_positions() -> None:
    torch.manual_seed(0)
    spec = SPECS[0]
    model = build_model("pnn", spec)
    batch = make_batch(spec, [1, 5, 8])
    history, target = model.embed(scramble_padding(batch, spec))
    for pool in ("sum", "mean"):
        fields = field_embeddings(history, target, batch["mask"], pool)  # (B, 2k, d)
        for b, length in enumerate([1, 5, 8]):
            pooled = history[b, :length].sum(0) / (length if pool == "mean" else 1)
            torch.testing.assert_close(fields[b, 3:], pooled)
            torch.testing.assert_close(fields[b, :3], target[b])
    empty = pool_history(torch.ones(1, 4, 2), torch.zeros(1, 4, dtype=torch.bool), "mean")
    assert empty.tolist() == [[0.0, 0.0]]


def test_pnn_inner_products_equal_a_double_loop() -> None:
    torch.manual_seed(0)
    spec = SPECS[1]
    model = build_model("pnn", spec)
    fields, products = model.product_layer(make_batch(spec, [2, 20, 9]))
    num_fields = 2 * spec.num_slots
    assert products.shape == (3, num_fields * (num_fields - 1) // 2)
    for b in range(3):
        naive = [fields[b, i] @ fields[b, j]
                 for i in range(num_fields) for j in range(i + 1, num_fields)]
        torch.testing.assert_close(products[b], torch.stack(naive))


def test_cross_bucket_is_a_deterministic_hash_of_slot_and_values() -> None:
    target = torch.tensor([[5, 5], [7, 3]])
    history = torch.tensor([[[5, 5], [2, 9]], [[5, 5], [2, 9]]])
    buckets = cross_bucket(target, history, 1000)
    assert buckets.shape == (2, 2, 2) and buckets.min() >= 0 and buckets.max() < 1000
    assert buckets[0, 0, 0] != buckets[0, 0, 1]  # the same pair (5, 5) in another slot
    torch.testing.assert_close(cross_bucket(target, history, 1000), buckets)
    assert buckets[0, 1, 0] == cross_bucket(torch.tensor([[5, 1]]), history[:1, 1:], 1000)[0, 0, 0]


@pytest.mark.parametrize("pool", ["sum", "mean"])
def test_wide_part_equals_a_hand_computation(pool) -> None:
    spec = FeatureSpec(("item", "category"), (6, 4), 3)
    model = build_model("wide-deep", spec, history_pool=pool, cross_buckets=5)
    with torch.no_grad():
        model.wide_target.table.weight.copy_(torch.arange(10.0)[:, None] / 10)  # item 0-5, cat 6-9
        model.wide_history.table.weight.copy_(torch.arange(10.0)[:, None] / 100)
        model.match_weight.copy_(torch.tensor([1.0, 2.0]))
        model.cross_weight.copy_(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0]))
        model.wide_bias.fill_(0.5)
    batch = {
        "target": torch.tensor([[3, 2], [5, 1]]),
        "history": torch.tensor([[[3, 2], [4, 2], [3, 1]], [[2, 3], [5, 1], [4, 2]]]),
        "mask": torch.tensor([[True, True, True], [True, True, False]]),
    }
    buckets = cross_bucket(batch["target"], batch["history"], 5)
    scale = 1 if pool == "sum" else 1 / 3
    # user 0: target item 3 (0.3) + category 2 (row 8: 0.8); history rows 3+8, 4+8, 3+7
    # (0.11 + 0.12 + 0.10); item 3 matches twice, category 2 twice; all 3 positions crossed.
    crosses = sum(10.0 * (1 + int(buckets[0, j, r])) for j in range(3) for r in range(2))
    expected_0 = 0.5 + 1.1 + 0.33 * scale + 2 * 1.0 + 2 * 2.0 + crosses
    # user 1: target item 5 (0.5), category unknown 1 (row 7: 0.7); history (padding excluded)
    # rows 2+9, 5+7 (0.11 + 0.12); item 5 matches once; unknown never matches.
    scale = 1 if pool == "sum" else 1 / 2
    crosses = sum(10.0 * (1 + int(buckets[1, j, r])) for j in range(2) for r in range(2))
    expected_1 = 0.5 + 1.2 + 0.23 * scale + 1 * 1.0 + crosses
    torch.testing.assert_close(model.wide_logit(batch), torch.tensor([expected_0, expected_1]))


# --- learning ---------------------------------------------------------------------------------


def planted_data(size: int, seed: int) -> tuple[FeatureSpec, dict[str, torch.Tensor]]:
    """Users click items of their favourite category; positives share it, negatives are drawn
    uniformly. Signal: does the target's category match the history's."""
    g = torch.Generator().manual_seed(seed)
    spec = FeatureSpec(("item", "category", "brand"), (62, 8, 12), 10)
    item_category = torch.arange(60) % 6
    item_brand = torch.randint(0, 10, (60,), generator=torch.Generator().manual_seed(0))
    favourite = torch.randint(0, 6, (size,), generator=g)
    lengths = torch.randint(1, 11, (size,), generator=g)
    liked = favourite[:, None] + 6 * torch.randint(0, 10, (size, 11), generator=g)  # (B, 11)
    noise = torch.randint(0, 60, (size, 11), generator=g)
    items = torch.where(torch.rand(size, 11, generator=g) < 0.8, liked, noise)
    label = torch.randint(0, 2, (size,), generator=g)
    items[:, 10] = torch.where(label == 1, liked[:, 10], noise[:, 10])
    ids = torch.stack([items + 2, item_category[items] + 2, item_brand[items] + 2], -1)
    mask = torch.arange(10)[None, :] < lengths[:, None]
    batch = {
        "history": ids[:, :10] * mask[..., None], "mask": mask, "target": ids[:, 10],
        "label": label.float(), "user": torch.arange(size), "index": torch.arange(size),
    }
    return spec, batch


@pytest.mark.parametrize("name", NAMES)
def test_each_model_learns_a_planted_signal(name) -> None:
    torch.manual_seed(0)
    spec, train = planted_data(1500, seed=1)
    _, test = planted_data(1000, seed=2)
    model = build_model(name, spec)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.005)
    model.train()
    for _ in range(3):
        for rows in torch.randperm(1500).split(150):
            batch = {key: value[rows] for key, value in train.items()}
            out = model(batch, extra_losses=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch["label"])
            optimiser.zero_grad()
            (loss + out.aux_loss).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        scores = model(test).logits
    auc = roc_auc_score(test["label"].numpy(), scores.numpy())
    assert auc > 0.6, f"{name}: test AUC {auc:.3f}"


@pytest.mark.skipif(
    importlib.util.find_spec("camn.data.sources.synthetic") is None
    or importlib.util.find_spec("camn.train.loop") is None,
    reason="needs camn.data.sources.synthetic and camn.train.loop",
)
def test_each_model_beats_chance_on_synthetic_store_with_the_trainer(tmp_path) -> None:
    from camn.config import TrainConfig
    from camn.data.prepare import prepare
    from camn.data.sources.synthetic import generate
    from camn.data.store import PreparedStore
    from camn.train.loop import train_one

    raw = generate(users=2000, items=150, attributes=4, seed=0)
    prepare(raw, tmp_path / "store", protocol="last", max_len=10, seed=0)  # 3200 / 400 / 400
    store = PreparedStore(tmp_path / "store")
    for name in NAMES:
        config = TrainConfig(model=name, epochs=2, batch_size=256, lr=0.005, device="cpu",
                             progress=False)
        metrics = train_one(store, config, seed=0)
        assert math.isfinite(metrics["test_auc"]) and metrics["test_auc"] > 0.6, (name, metrics)
