"""Sequence baselines DIN, DIEN, DMIN, DHAN: shapes, masks, auxiliary losses, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from camn.models import FeatureSpec, build_model
from camn.models.dhan import group_pool
from camn.models.layers import Packing, TargetAttention, causal_mask, item_vectors

MODELS = ["din", "dien", "dmin", "dhan"]
AUX_MODELS = ["dien", "dmin"]


def make_spec(k: int = 4, vocab: int = 50, length: int = 8) -> FeatureSpec:
    return FeatureSpec(tuple(f"a{i}" for i in range(k)), (vocab,) * k, length)


def make_batch(spec: FeatureSpec, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random batch with the given history lengths; padding ids 0 (left-aligned)."""
    g = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), spec.max_len
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    shape_h, shape_t = (batch, length, spec.num_slots), (batch, spec.num_slots)
    history = torch.randint(2, spec.vocab_sizes[0], shape_h, generator=g) * mask[..., None]
    negative = torch.randint(2, spec.vocab_sizes[0], shape_h, generator=g) * mask[..., None]
    return {
        "history": history,
        "mask": mask,
        "target": torch.randint(2, spec.vocab_sizes[0], shape_t, generator=g),
        "label": torch.randint(0, 2, (batch,), generator=g).float(),
        "user": torch.arange(batch),
        "index": torch.arange(batch),
        "history_negative": negative,
    }


def with_garbage(batch: dict, key: str, seed: int) -> dict:
    """Copy of ``batch`` with random ids at the padded positions of ``key``."""
    g = torch.Generator().manual_seed(seed)
    out = dict(batch)
    noise = torch.randint(2, 50, batch[key].shape, generator=g)
    out[key] = torch.where(batch["mask"][..., None], batch[key], noise)
    return out


LENGTHS = [1, 3, 8, 5, 2, 8, 7, 4]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("k", [3, 5])
def test_output_shape_and_finite(name: str, k: int) -> None:
    spec = make_spec(k=k)
    model = build_model(name, spec, embed_dim=6).eval()
    out = model(make_batch(spec, LENGTHS))
    assert out.logits.shape == (len(LENGTHS),)
    assert torch.isfinite(out.logits).all()
    assert out.aux_loss.shape == ()
    assert out.routing is None


@pytest.mark.parametrize("name", MODELS)
def test_empty_history_gives_finite_logits_and_gradients(name: str) -> None:
    spec = make_spec(k=3)
    model = build_model(name, spec, embed_dim=6).train()
    out = model(make_batch(spec, [0, 3, 8, 0, 1]), extra_losses=True)
    (out.logits.sum() + out.aux_loss).backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [False, True])
def test_padding_invariance(name: str, train: bool) -> None:
    torch.manual_seed(0)
    spec = make_spec(k=4, length=10)
    model = build_model(name, spec, embed_dim=6).train(train)
    batch = make_batch(spec, [1, 4, 10, 6, 2, 9], seed=1)
    reference = model(batch)
    for seed in (2, 3):
        changed = model(with_garbage(batch, "history", seed))
        torch.testing.assert_close(changed.logits, reference.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(k=4, length=8)
    model = build_model(name, spec, embed_dim=6).train()
    batch = make_batch(spec, [1, 8, 3, 8, 5, 2, 6, 1], seed=4)
    out = model(batch, extra_losses=True)
    loss = F.binary_cross_entropy_with_logits(out.logits, batch["label"]) + out.aux_loss
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", AUX_MODELS)
def test_aux_loss_ignores_padding_and_is_positive(name: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(k=3, length=8)
    model = build_model(name, spec, embed_dim=6).train()
    batch = make_batch(spec, [1, 8, 3, 6, 2, 8], seed=5)
    reference = model(batch, extra_losses=True)
    assert reference.aux_loss > 0
    assert set(reference.aux_terms) == {"next_click"}
    changed = model(with_garbage(batch, "history_negative", 6), extra_losses=True)
    torch.testing.assert_close(changed.aux_loss, reference.aux_loss, rtol=0, atol=1e-6)
    # aux_weight scales the loss; 0 switches it off
    model0 = build_model(name, spec, embed_dim=6, aux_weight=0.0)
    assert model0(batch, extra_losses=True).aux_loss.item() == 0.0
    # histories of length 1 give no (h_t, e_{t+1}) pair
    single = make_batch(spec, [1, 1, 1], seed=7)
    assert model(single, extra_losses=True).aux_loss.item() == 0.0


@pytest.mark.parametrize("name", AUX_MODELS)
def test_aux_loss_only_when_asked_and_asking_needs_history_negatives(name: str) -> None:
    """A training-mode forward pass without ``extra_losses`` computes no auxiliary loss, even
    with ``history_negative`` in the batch; asked without one, it says what is missing."""
    torch.manual_seed(0)
    spec = make_spec(k=3, length=8)
    model = build_model(name, spec, embed_dim=6).train()
    batch = make_batch(spec, [1, 8, 3, 6, 2, 8], seed=5)
    plain = model(batch)
    assert plain.aux_loss.item() == 0.0 and not plain.aux_loss.requires_grad
    assert plain.aux_terms == {}
    asked = model(batch, extra_losses=True)
    torch.testing.assert_close(asked.logits, plain.logits, rtol=0, atol=0)  # same scores
    assert asked.aux_loss > 0
    del batch["history_negative"]
    with pytest.raises(ValueError, match=r"extra losses need batch\['history_negative'\]"):
        model(batch, extra_losses=True)
    assert model(batch).aux_loss.item() == 0.0  # scoring needs no drawn items


@pytest.mark.parametrize("name", AUX_MODELS)
def test_aux_loss_learns_easy_negatives_only(name: str) -> None:
    """Trained on the auxiliary loss alone, it falls far below log 4 (its value for a coin-flip
    scorer, per pair of click and non-click) when the negatives come from a disjoint item set,
    and cannot when the negatives are the clicked items themselves."""
    spec = make_spec(k=3, vocab=40, length=8)
    final = {}
    for easy in (True, False):
        torch.manual_seed(0)
        model = build_model(name, spec, embed_dim=6).train()
        batch = make_batch(spec, [8, 6, 5, 8, 7, 3, 8, 4] * 4, seed=8)
        batch["history"] = (batch["history"] % 18 + 2) * batch["mask"][..., None]  # ids 2..19
        if easy:
            negatives = batch["history_negative"] % 18 + 22  # ids 22..39
            batch["history_negative"] = negatives * batch["mask"][..., None]
        else:
            batch["history_negative"] = batch["history"].clone()
        optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(60):
            loss = model(batch, extra_losses=True).aux_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            final[easy] = model(batch, extra_losses=True).aux_loss.item()
    assert final[True] < 0.3 * math.log(4)
    assert final[False] > 0.95 * math.log(4)


def test_dmin_masks_block_padding_and_future_exactly() -> None:
    torch.manual_seed(0)
    spec = make_spec(k=4, length=7)
    model = build_model("dmin", spec, embed_dim=5).train()
    batch = with_garbage(make_batch(spec, [1, 4, 7, 3], seed=9), "history", 10)
    mask = batch["mask"]
    allowed = torch.ones(7, 7).tril().bool()[None] & mask[:, None, :]  # (B, L, L)
    for dense in (False, True):  # the CPU's packed rows and the accelerators' every row
        packing = Packing(mask, dense=dense)
        items = model.embedding(packing.pack(batch["history"])).flatten(-2)  # (N, D)
        for block in (model.refiner.attention, model.extractor.attention):
            weights, _ = block.weights(items, packing)  # (H, B, L, L)
            assert (weights[:, ~allowed] == 0).all()
            real_rows = weights[:, mask]  # (H, real queries, L)
            torch.testing.assert_close(real_rows.sum(-1), torch.ones_like(real_rows[..., 0]))
        refined = model.refiner(items, packing)
        target = model.embedding(batch["target"]).flatten(-2)
        _, interest_weights, _ = model.extractor(refined, target, packing)  # (B, k, L)
        assert (interest_weights.transpose(0, 1)[:, ~mask] == 0).all()
        torch.testing.assert_close(interest_weights.sum(-1), torch.ones(4, 4))
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(causal_mask(torch.tensor([[True, True, False]]))[0], expected)


def test_dmin_packed_attention_equals_target_attention() -> None:
    torch.manual_seed(0)
    heads, batch, length, dim = 3, 5, 6, 8
    layer = TargetAttention(heads, dim, dim, length, positional=True)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    sequences = torch.randn(batch, heads, length, dim)
    target = torch.randn(batch, dim)
    mask = torch.arange(length)[None] < torch.tensor([1, 6, 3, 2, 5])[:, None]
    pooled, weights = layer(sequences, target, mask)
    for dense in (False, True):
        packing = Packing(mask, dense=dense)
        fast_pooled, fast_weights = layer.forward_packed(
            packing.pack_heads(sequences.transpose(0, 1)), target, packing
        )
        torch.testing.assert_close(fast_pooled, pooled, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast_weights, weights, rtol=1e-5, atol=1e-6)


def test_dhan_group_pool_matches_naive_loop() -> None:
    torch.manual_seed(0)
    batch, length, dim = 4, 6, 3
    items, scores = torch.randn(batch, length, dim), torch.randn(batch, length)
    groups = torch.randint(2, 5, (batch, length))
    mask = torch.arange(length)[None] < torch.tensor([6, 1, 4, 3])[:, None]
    vectors, first = group_pool(items, scores, groups, mask)
    for b in range(batch):
        seen = set()
        for i in range(int(mask[b].sum())):
            g = int(groups[b, i])
            assert bool(first[b, i]) == (g not in seen)
            seen.add(g)
            members = [j for j in range(int(mask[b].sum())) if int(groups[b, j]) == g]
            w = torch.softmax(scores[b, members], 0)
            torch.testing.assert_close(vectors[b, i], (w[:, None] * items[b, members]).sum(0))
    assert not first[~mask].any()


def test_dhan_rejects_bad_group_slot() -> None:
    with pytest.raises(ValueError, match="group_slot"):
        build_model("dhan", make_spec(k=3), group_slot=3)


def planted_data(spec: FeatureSpec, num_users: int, seed: int) -> dict[str, torch.Tensor]:
    """Users have a favourite category (slot 1); their history is drawn from it, the positive
    target too, the negative target from another category. Item ids are random."""
    g = torch.Generator().manual_seed(seed)
    k, length, categories = spec.num_slots, spec.max_len, 6
    favourite = torch.randint(0, categories, (num_users,), generator=g)
    lengths = torch.randint(1, length + 1, (num_users,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]

    def items(category: torch.Tensor) -> torch.Tensor:
        ids = torch.randint(2, spec.vocab_sizes[0], (*category.shape, k), generator=g)
        ids[..., 1] = category + 2
        return ids

    history = items(favourite[:, None].expand(-1, length)) * mask[..., None]
    other = (favourite + torch.randint(1, categories, (num_users,), generator=g)) % categories
    label = torch.arange(2 * num_users) % 2
    users = torch.arange(2 * num_users) // 2
    target = torch.where(label[:, None] == 1, items(favourite[users]), items(other[users]))
    negative = torch.randint(2, spec.vocab_sizes[0], (2 * num_users, length, k), generator=g)
    return {
        "history": history[users],
        "mask": mask[users],
        "target": target,
        "label": label.float(),
        "user": users,
        "index": torch.arange(2 * num_users),
        "history_negative": negative * mask[users][..., None],
    }


def rows(data: dict, index: torch.Tensor) -> dict:
    return {key: value[index] for key, value in data.items()}


@pytest.mark.parametrize("name", MODELS)
def test_learns_planted_signal(name: str) -> None:
    torch.manual_seed(0)
    spec = make_spec(k=4, vocab=60, length=10)
    train, test = planted_data(spec, 600, seed=11), planted_data(spec, 200, seed=12)
    model = build_model(name, spec, embed_dim=8, mlp_hidden=(32, 16))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(5):
        model.train()
        order = torch.randperm(1200, generator=torch.Generator().manual_seed(epoch))
        for start in range(0, 1200, 128):
            batch = rows(train, order[start : start + 128])
            out = model(batch, extra_losses=True)
            loss = F.binary_cross_entropy_with_logits(out.logits, batch["label"]) + out.aux_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        scores = model.eval()(test).logits
    assert roc_auc_score(test["label"].numpy(), scores.numpy()) > 0.6


@pytest.mark.parametrize("name", ["dien", "dmin"])
def test_trains_through_the_pipeline(name: str, tmp_path) -> None:
    """End to end on a small synthetic store with the project's trainer (history negatives
    come from the store's batches)."""
    try:
        from camn.config import TrainConfig
        from camn.data.prepare import prepare
        from camn.data.sources.synthetic import generate
        from camn.data.store import PreparedStore
        from camn.train.loop import train_one
    except ImportError as error:
        pytest.skip(f"pipeline not available: {error}")
    raw = generate(users=400, items=150, attributes=4, seed=3)
    prepare(raw, tmp_path / "store", protocol="sliding", max_len=8, seed=3)
    config = TrainConfig(
        model=name, options={"embed_dim": 6}, epochs=1, batch_size=256, progress=False
    )
    result = train_one(PreparedStore(tmp_path / "store"), config, seed=0)
    assert 0.0 <= result["test_auc"] <= 1.0


def test_din_paper_output_network_reads_only_target_and_interest() -> None:
    spec = make_spec(k=3)
    model = build_model("din-paper", spec, embed_dim=6, input_norm=False).eval()
    batch = make_batch(spec, LENGTHS)
    items, target = item_vectors(*model.embed(batch))
    interest, _ = model.interest(items, target, batch["mask"])
    expected = model.head.net(torch.cat([target, interest], dim=-1)).squeeze(-1)
    torch.testing.assert_close(model(batch).logits, expected)
    assert isinstance(model.head.net[0], torch.nn.Linear)  # no input batch norm


@pytest.mark.parametrize(
    ("name", "interests"), [("din", 1), ("dien", 1), ("dmin", 3), ("dhan", 2)]
)
def test_pooled_history_option_sets_the_output_network_width(name: str, interests: int) -> None:
    spec, d = make_spec(k=3), 6
    width = spec.num_slots * d
    for pooled, base in ((True, 3 * width), (False, width)):
        model = build_model(name, spec, embed_dim=d, pooled_history=pooled).train()
        norm = model.head.net[0]
        assert isinstance(norm, torch.nn.BatchNorm1d)
        assert norm.num_features == base + interests * width
        out = model(make_batch(spec, LENGTHS), extra_losses=True)
        (out.logits.sum() + out.aux_loss).backward()
        assert all(p.grad is not None for p in model.parameters())
