"""CAMN = DMIN + the paper's routing (Eq. 1-4) and diversity loss (Eq. 7), both head readings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import camn.models.camn as camn_module
from camn.models import FeatureSpec, build_model
from camn.models.camn import CAMN, AttributeClickLoss, AttributeRouting, SlotAttention
from camn.models.layers import (
    CausalSelfAttention,
    CollaborativeRouting,
    Packing,
    attention_health,
    causal_mask,
    diversity_loss,
    keep_top_q,
)
from camn.models.registry import resolved_options

K, D, L = 4, 6, 8
SPEC = FeatureSpec(("item", "cat", "brand", "price"), (50, 9, 12, 7), L)
READINGS = ["camn-dense", "camn"]  # (b), (a)


def make_batch(size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random left-aligned histories of 1..L items (one full, one of length 1), padding ids 0,
    with drawn history negatives (DMIN's auxiliary loss)."""
    generator = torch.Generator().manual_seed(seed)
    highs = torch.tensor(SPEC.vocab_sizes)

    def ids(*shape: int) -> torch.Tensor:
        unit = torch.rand(*shape, len(highs), generator=generator)
        return 1 + (unit * (highs - 1)).long()  # ids in [1, vocab)

    lengths = torch.randint(1, L + 1, (size,), generator=generator)
    lengths[0], lengths[-1] = L, 1
    mask = torch.arange(L)[None, :] < lengths[:, None]
    return {
        "index": torch.arange(size),
        "history": ids(size, L) * mask[..., None],
        "history_negative": ids(size, L) * mask[..., None],
        "mask": mask,
        "target": ids(size),
        "label": torch.randint(0, 2, (size,), generator=generator).float(),
        "user": torch.arange(size),
    }


def make_model(name: str = "camn", seed: int = 0, **options) -> CAMN:
    torch.manual_seed(seed)
    model = build_model(name, SPEC, embed_dim=D, mlp_hidden=[16, 8], **options)
    with torch.no_grad():  # larger embeddings than the 1e-2 init, so attention is not uniform
        model.embedding.table.weight.normal_()
    return model


def inputs(model: CAMN, batch: dict) -> tuple[Packing, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the extractor sees in ``forward``: packing, refined rows, P (B, L, k), target."""
    packing = Packing(batch["mask"])
    attributes = model.embedding(packing.pack(batch["history"]))
    refined = model.refiner(attributes.flatten(-2), packing)
    target = model.embedding(batch["target"]).flatten(-2)
    return packing, refined, model.route(attributes, packing), target


# ------------------------------------------------------------------------------- registry


def test_presets_defaults_and_json_options() -> None:
    camn = resolved_options("camn")
    assert camn["alpha"] == 1e-4 and camn["q"] is None and camn["routing"] is True
    assert camn["heads"] == "slot" and camn["diversity_pairs"] == "all"  # reading (a)
    assert camn["router"] == "joint" and camn["tie_weight"] == 0.0  # the extension is off
    dmin = resolved_options("dmin")
    assert {key: camn[key] for key in dmin} == dmin  # DMIN's settings, unchanged
    presets = {
        "camn-route": {"alpha": 0.0}, "camn-loss": {"routing": False},
        "camn-dense": {"heads": "dense"}, "camn-dense-route": {"heads": "dense", "alpha": 0.0},
        "camn-dense-loss": {"heads": "dense", "routing": False},
        "camn-tied": {"heads": "dense", "tie_weight": 1.0},
    }
    for name, preset in presets.items():
        assert resolved_options(name) == {**camn, **preset}, name
    model = build_model("camn-dense", SPEC, **json.loads(json.dumps(resolved_options(
        "camn-dense"))))
    assert model.router.q == math.ceil(K / 2)
    dmin = build_model("dmin", SPEC)  # CAMN = DMIN's blocks + the router
    blocks = {name: type(block) for name, block in model.named_children()}
    assert blocks == {**{n: type(b) for n, b in dmin.named_children()},
                      "router": CollaborativeRouting}
    assert model.extractor.attention.num_heads == K and model.extractor.attention.head_dim == 18
    assert type(model.extractor.attention) is CausalSelfAttention
    assert isinstance(build_model("camn", SPEC).extractor.attention, SlotAttention)
    assert build_model("camn-loss", SPEC).router is None and model.tie is None
    assert isinstance(build_model("camn-tied", SPEC).tie, AttributeClickLoss)
    attribute = build_model("camn", SPEC, router="attribute").router
    assert isinstance(attribute, AttributeRouting)


@pytest.mark.parametrize(
    "options",
    [{"q": 0}, {"q": K + 1}, {"heads": "both"}, {"diversity_pairs": "some"}, {"router": "x"},
     {"routing": False, "tie_weight": 1.0}],
)
def test_bad_options_are_rejected(options: dict) -> None:
    with pytest.raises(ValueError):
        build_model("camn", SPEC, **options)


# ------------------------------------------------------------------- reading (b) is DMIN + P


@pytest.mark.parametrize("train", [True, False])
def test_dense_reading_with_unit_scores_and_no_diversity_is_exactly_dmin(
    train: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    dmin = build_model("dmin", SPEC, embed_dim=D, mlp_hidden=[16, 8]).train(train)
    batch = make_batch(12)
    reference = dmin(batch, extra_losses=train)
    assert reference.aux_loss > 0 or not train
    for name in ("camn-dense-loss", "camn-dense"):
        model = make_model(name, seed=1, alpha=0.0).train(train)
        loaded = model.load_state_dict(dmin.state_dict(), strict=False)
        assert not loaded.unexpected_keys
        assert set(loaded.missing_keys) == ({"router.norm.weight", "router.norm.bias",
                                             "router.weight.weight"} if model.router else set())
        if model.router is not None:  # P = 1 at every real item: every logit times 1
            monkeypatch.setattr(model, "route", lambda a, p: p.unpack(a.new_ones(len(a), K)))
        output = model(batch, extra_losses=train)
        torch.testing.assert_close(output.logits, reference.logits, rtol=0, atol=0)
        torch.testing.assert_close(output.aux_loss, reference.aux_loss, rtol=0, atol=0)


def test_unit_scores_with_diversity_add_alpha_times_diversity_to_dmins_loss() -> None:
    torch.manual_seed(0)
    dmin = build_model("dmin", SPEC, embed_dim=D, mlp_hidden=[16, 8])
    model = make_model("camn-dense-loss", alpha=0.5)
    model.load_state_dict(dmin.state_dict())
    batch = make_batch(12)
    output, reference = model(batch, extra_losses=True), dmin(batch, extra_losses=True)
    diversity = output.aux_terms["diversity"]
    assert diversity > 0
    torch.testing.assert_close(output.aux_loss, reference.aux_loss + 0.5 * diversity)
    torch.testing.assert_close(output.aux_terms["next_click"], reference.aux_terms["next_click"])


# -------------------------------------------------------------------------- Eq. 4 and Eq. 7


@torch.no_grad()
def naive_logits(model: CAMN, refined: torch.Tensor, packing: Packing,
                 scores: torch.Tensor | None) -> torch.Tensor:
    """The extractor's logits (k, B, L, L) as a loop over samples, heads and (query, key)."""
    dense, extractor = model.heads == "dense", model.extractor.attention
    rows = packing.unpack(refined)  # (B, L, D)
    out = torch.zeros(K, len(rows), L, L)
    for b in range(len(rows)):
        for r in range(K):
            if dense:  # DMIN's dense Q, K over the whole item vector, head r = its r-th slice
                qkv = (rows[b] @ extractor.qkv.weight.T + extractor.qkv.bias)
                qkv = qkv.view(L, 3, K, extractor.head_dim)
                queries, keys, width = qkv[:, 0, r], qkv[:, 1, r], K * D
            else:  # slot r of the item vector, head r's own d x d maps
                weight = extractor.qkv.weight[r]  # (d, 3d)
                slot = rows[b, :, r * D : (r + 1) * D]
                queries, keys, width = slot @ weight[:, :D], slot @ weight[:, D : 2 * D], D
            for i in range(L):
                for j in range(L):
                    if packing.mask[b, i] and packing.mask[b, j]:
                        logit = float(queries[i] @ keys[j]) / math.sqrt(width)
                        scale = 1.0 if scores is None else float(scores[b, j, r])
                        out[r, b, i, j] = logit * scale
    return out


@pytest.mark.parametrize("name", [*READINGS, "camn-dense-loss", "camn-loss"])
def test_head_r_logit_column_j_is_scaled_by_p_of_key_j_and_attribute_r(name: str) -> None:
    model = make_model(name)
    batch = make_batch(5)
    packing, refined, scores, _ = inputs(model, batch)
    key_scale = None if scores is None else scores.permute(2, 0, 1)
    logits, _ = model.extractor.attention.logits(refined, packing, key_scale)
    real = (packing.mask[:, :, None] & packing.mask[:, None, :])[None].expand_as(logits)
    expected = naive_logits(model, refined, packing, scores)
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-5, atol=1e-6)
    if scores is not None:  # the scaling is not the identity here
        plain, _ = model.extractor.attention.logits(refined, packing)
        assert not torch.allclose(plain[real], logits[real])


@pytest.mark.parametrize("name", READINGS)
def test_diversity_loss_is_over_the_extractors_causal_scaled_heads(name: str) -> None:
    model = make_model(name, alpha=0.25)
    batch = make_batch(6)
    packing, refined, scores, _ = inputs(model, batch)
    logits = naive_logits(model, refined, packing, scores)  # (k, B, L, L)
    allowed = causal_mask(batch["mask"])[None].expand_as(logits)
    attention = torch.softmax(logits.masked_fill(~allowed, -math.inf), -1).nan_to_num(0.0)
    expected = diversity_loss(attention.transpose(0, 1), batch["mask"])
    output = model(batch, extra_losses=True)
    torch.testing.assert_close(output.aux_terms["diversity"], expected, rtol=1e-5, atol=1e-6)
    next_click = output.aux_terms["next_click"]
    torch.testing.assert_close(output.aux_loss, next_click + 0.25 * expected)
    assert output.aux_loss.requires_grad


def test_diversity_loss_equals_hand_computation() -> None:
    # k = 2 heads, L = 2; sample 0 has two items, sample 1 one (its second query row is padding).
    first = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.0, 1.0]]])  # A_1, A_2
    second = torch.tensor([[[1.0, 0.0], [0.3, 0.7]], [[1.0, 0.0], [0.9, 0.1]]])
    attention = torch.stack([first, second])  # (B=2, k=2, L=2, L=2)
    mask = torch.tensor([[True, True], [True, False]])
    # Sample 0: <A1,A1> = 1.5, <A2,A2> = 1.5, <A1,A2> = 1.0 -> all (1.5 + 1.5 + 2) / 4 = 1.25,
    # distinct 2 / 4 = 0.5. Sample 1 (row 0 only): every pair gives 1 -> all 4 / 4, distinct 2 / 4.
    torch.testing.assert_close(diversity_loss(attention, mask), torch.tensor((1.25 + 1.0) / 2))
    torch.testing.assert_close(
        diversity_loss(attention, mask, distinct=True), torch.tensor((0.5 + 0.5) / 2)
    )


@pytest.mark.parametrize("distinct", [False, True])
def test_diversity_loss_equals_pair_loop(distinct: bool) -> None:
    torch.manual_seed(0)
    mask = make_batch(5)["mask"]
    attention = torch.softmax(torch.randn(5, 3, L, L).masked_fill(~mask[:, None, None], -1e9), -1)
    total = torch.zeros(())
    for b in range(5):
        for i in range(3):
            for j in range(3):
                if not (distinct and i == j):
                    total += (attention[b, i] * attention[b, j])[mask[b]].sum()
    expected = total / 9 / 5
    torch.testing.assert_close(diversity_loss(attention, mask, distinct), expected)


def test_distinct_pairs_option_drops_the_self_pairs() -> None:
    batch = make_batch(6)
    both = [make_model(diversity_pairs=p)(batch, extra_losses=True).aux_terms["diversity"]
            for p in ("all", "distinct")]
    assert 0 < both[1] < both[0]


# ---------------------------------------------------------------------------- routing, Eq. 1-3


@pytest.mark.parametrize("q", range(1, K + 1))
def test_routing_is_zero_at_padding_and_sums_to_one_with_k_minus_q_zeros(q: int) -> None:
    model = make_model(q=q).eval()
    batch = make_batch(10)
    routing = model(batch).routing  # (B, L, k)
    mask = batch["mask"]
    assert routing.shape == (10, L, K) and torch.all(routing[~mask] == 0)
    real = routing[mask]  # (N, k)
    torch.testing.assert_close(real.sum(-1), torch.ones(len(real)))
    assert torch.all((real == 0).sum(-1) == K - q)
    # Eq. 1-3 on each real item's own attribute embeddings, nothing else
    logits = model.router.logits(model.embedding(batch["history"][mask]))
    torch.testing.assert_close(real, torch.softmax(keep_top_q(logits, q), -1))


def test_keep_top_q_passes_no_gradient_to_dropped_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 6, requires_grad=True)
    scores = torch.softmax(keep_top_q(logits, 2), dim=-1)
    (scores * torch.randn(5, 7, 6)).sum().backward()
    kept = scores > 0
    assert torch.all(kept.sum(-1) == 2)
    assert torch.all(logits.grad[~kept] == 0)
    assert torch.all(logits.grad[kept] != 0)


@pytest.mark.parametrize("name", [*READINGS, "camn-tied"])
@pytest.mark.parametrize("loss", ["click", "diversity"])
def test_gradients_reach_the_routers_weight(name: str, loss: str) -> None:
    """Through the click logits alone (alpha = 0) and through the diversity loss alone."""
    options = {"alpha": 0.0, "tie_weight": 0.0} if loss == "click" else {
        "alpha": 1.0, "aux_weight": 0.0, "tie_weight": 0.0}
    model = make_model(name, **options)
    output = model(make_batch(16), extra_losses=True)
    (output.logits.sum() if loss == "click" else output.aux_loss).backward()
    grad = model.router.weight.weight.grad  # (k, k*d): W_h
    assert grad is not None and torch.all(grad.abs().sum(-1) > 0)


@pytest.mark.parametrize(
    ("name", "options"),
    [("camn-dense", {}), ("camn", {}), ("camn-dense-loss", {}), ("camn-loss", {}),
     ("camn-tied", {}), ("camn-tied", {"heads": "slot", "router": "attribute"})],
)
def test_gradients_reach_every_parameter(name: str, options: dict) -> None:
    model = make_model(name, **options)
    batch = make_batch(16)
    output = model(batch, extra_losses=True)
    loss = nn.functional.binary_cross_entropy_with_logits(output.logits, batch["label"])
    (loss + output.aux_loss).backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


# ------------------------------------------------------------------------- padding and rows


def with_garbage(batch: dict, seed: int) -> dict:
    garbage = make_batch(len(batch["mask"]), seed=seed)
    noisy = dict(batch)
    for key in ("history", "history_negative"):
        filler = garbage[key].clamp(min=1)  # real ids everywhere
        noisy[key] = torch.where(batch["mask"][..., None], batch[key], filler)
    return noisy


def packing_of(dense: bool) -> type[Packing]:
    """``Packing`` whose ``of`` (the models' constructor) takes packed or dense rows."""

    class Forced(Packing):
        @classmethod
        def of(cls, batch: dict[str, torch.Tensor]) -> Packing:
            return Packing(batch["mask"], dense=dense)

    return Forced


@pytest.mark.parametrize(
    ("name", "options"),
    [("camn-dense", {}), ("camn", {}), ("camn-loss", {}), ("camn-tied", {}),
     ("camn-tied", {"heads": "slot", "router": "attribute"})],
)
@pytest.mark.parametrize("dense", [False, True])
def test_padding_ids_change_nothing(
    name: str, options: dict, dense: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packed rows (the CPU's) and every row (the accelerators', padding computed and masked)."""
    batch = make_batch(12)
    noisy = with_garbage(batch, seed=1)
    assert not torch.equal(noisy["history"], batch["history"])
    model = make_model(name, **options)
    for train in (False, True):  # evaluation first: training forwards move the batch norms
        model.train(train)
        monkeypatch.setattr(camn_module, "Packing", packing_of(dense=False))
        reference = model(batch, extra_losses=train)
        monkeypatch.setattr(camn_module, "Packing", packing_of(dense=dense))
        for output in (model(batch, extra_losses=train), model(noisy, extra_losses=train)):
            torch.testing.assert_close(output.logits, reference.logits)
            torch.testing.assert_close(output.aux_loss, reference.aux_loss)
            assert output.aux_terms.keys() == reference.aux_terms.keys()
            for key, value in reference.aux_terms.items():
                torch.testing.assert_close(output.aux_terms[key], value)
            if reference.routing is not None:
                torch.testing.assert_close(output.routing, reference.routing)
                assert torch.all(output.routing[~batch["mask"]] == 0)


@pytest.mark.parametrize("name", ["camn-dense", "camn-loss", "camn-tied"])
def test_extra_losses_only_when_asked(name: str) -> None:
    """The trainer asks (``extra_losses=True``); a training-mode pass that does not ask gets
    the same logits and routing and a zero aux_loss, whatever keys the batch has."""
    model = make_model(name).train()
    batch = make_batch(12)
    plain, asked = model(batch), model(batch, extra_losses=True)
    torch.testing.assert_close(plain.logits, asked.logits, rtol=0, atol=0)
    if asked.routing is not None:
        torch.testing.assert_close(plain.routing, asked.routing, rtol=0, atol=0)
    assert plain.aux_loss.item() == 0 and not plain.aux_loss.requires_grad
    assert asked.aux_loss > 0 and asked.aux_loss.requires_grad
    del batch["history_negative"]
    with pytest.raises(ValueError, match="CAMN's extra losses need batch"):
        model(batch, extra_losses=True)
    only_diversity = make_model(name, aux_weight=0.0, tie_weight=0.0)(batch, extra_losses=True)
    assert set(only_diversity.aux_terms) == {"diversity"}  # no drawn items needed for Eq. 7


# ------------------------------------------------------------- the extension (camn-tied)


def test_attribute_routing_column_r_sees_attribute_r_only() -> None:
    torch.manual_seed(0)
    router = AttributeRouting(K, D, q=K)
    items = torch.randn(7, K, D)
    logits = router.logits(items)
    for r in range(K):
        changed = items.clone()
        changed[:, [s for s in range(K) if s != r]] = torch.randn(7, K - 1, D)
        torch.testing.assert_close(router.logits(changed)[:, r], logits[:, r])
        x = items[:, r]
        normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False,
                                                                    keepdim=True) + 1e-5)
        torch.testing.assert_close(logits[:, r], normed @ router.weight.weight[r, :, 0])
    scores = AttributeRouting(K, D, q=2)(items)
    torch.testing.assert_close(scores.sum(-1), torch.ones(7))
    assert torch.all((scores == 0).sum(-1) == K - 2)


def test_attribute_click_loss_equals_hand_computation() -> None:
    torch.manual_seed(0)
    loss = AttributeClickLoss(K * D, K, D)
    with torch.no_grad():
        loss.bias.fill_(0.3)
    states, items, drawn = torch.randn(5, K * D), torch.randn(5, K, D), torch.randn(5, K, D)
    routing, drawn_routing = torch.softmax(torch.randn(5, K), -1), torch.softmax(
        torch.randn(5, K), -1)

    def score(m: int, x: torch.Tensor, p: torch.Tensor) -> float:
        query = (loss.match.weight @ states[m] + loss.match.bias).detach()  # (k*d,)
        return 0.3 + sum(float(p[r]) * float(query[r * D:(r + 1) * D] @ x[r]) for r in range(K))

    positive = torch.tensor([score(m, items[m], routing[m]) for m in range(5)])
    negative = torch.tensor([score(m, drawn[m], drawn_routing[m]) for m in range(5)])
    torch.testing.assert_close(loss.scores(states, items, routing), positive)
    expected = -torch.log(torch.sigmoid(positive)).mean() - torch.log(
        1 - torch.sigmoid(negative)).mean()
    got = loss.pair_loss(states, (items, routing), (drawn, drawn_routing))
    torch.testing.assert_close(got, expected)
    assert loss.pair_loss(states[:0], (items[:0], routing[:0]), (drawn[:0], routing[:0])) == 0


def test_tied_aux_loss_adds_the_weighted_attribute_click_loss() -> None:
    batch = make_batch(12)
    model = make_model("camn-tied", alpha=0.5, tie_weight=2.0)
    output = model(batch, extra_losses=True)
    terms = output.aux_terms
    assert terms["attribute_click"] > 0
    expected = terms["next_click"] + 0.5 * terms["diversity"] + 2.0 * terms["attribute_click"]
    torch.testing.assert_close(output.aux_loss, expected)
    direct = model.attribute_click(batch, model.run(batch))
    torch.testing.assert_close(terms["attribute_click"], direct)
    # through the routing of the clicked items, the extension's loss alone reaches W_h
    model.zero_grad()
    direct.backward()
    assert torch.all(model.router.weight.weight.grad.abs().sum(1) > 0)
    assert "attribute_click" not in model.eval()(batch).aux_terms


# ------------------------------------------------------------------------- attention health


def test_attention_health_on_a_hand_computed_example() -> None:
    # One head, one sample, three queries: row 0 has one allowed key (left out of the entropy),
    # row 1 two keys at 0.5 / 0.5 (entropy log 2 / log 2 = 1), row 2 three keys, all weight on
    # one (entropy 0). |logit| over the 1 + 2 + 3 allowed entries.
    allowed = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 1, 1]]], dtype=torch.bool)  # (1, 3, 3)
    attention = torch.tensor([[[[1.0, 0, 0], [0.5, 0.5, 0], [0, 1.0, 0]]]])  # (1, 1, 3, 3)
    logits = torch.tensor([[[[2.0, 9, 9], [-1.0, -1.0, 9], [0.0, 3.0, -3.0]]]])
    entropy, abs_logit = attention_health(attention, logits, allowed)
    torch.testing.assert_close(entropy, torch.tensor([0.5]))
    torch.testing.assert_close(abs_logit, torch.tensor([(2 + 1 + 1 + 0 + 3 + 3) / 6]))
    single = attention_health(attention[..., :1, :], logits[..., :1, :], allowed[:, :1])
    assert torch.isnan(single[0]).all() and single[1].item() == 2.0


@pytest.mark.parametrize("name", [*READINGS, "camn-loss"])
def test_health_terms_are_per_head_and_only_when_asked(name: str) -> None:
    model = make_model(name)
    batch = make_batch(10)
    assert set(model.train()(batch, extra_losses=True).aux_terms) == {"next_click", "diversity"}
    assert model.train()(batch).aux_terms == {}
    assert model.eval()(batch).aux_terms == {}  # prediction and export do not pay for it
    terms = model.evaluate(batch).aux_terms
    assert model(batch).aux_terms == {}  # the evaluation pass leaves no state behind
    assert set(terms) == {"attention_entropy", "attention_abs_logit", "diversity"}
    entropy, abs_logit = terms["attention_entropy"], terms["attention_abs_logit"]
    assert entropy.shape == abs_logit.shape == (K,)
    assert torch.all((entropy > 0) & (entropy <= 1 + 1e-6)) and torch.all(abs_logit > 0)
    # the same numbers from the extractor's logits and attention
    packing, refined, scores, target = inputs(model, batch)
    key_scale = None if scores is None else scores.permute(2, 0, 1)
    _, _, attention = model.extractor(refined, target, packing, key_scale)
    logits = naive_logits(model, refined, packing, scores)
    allowed = causal_mask(batch["mask"]) & batch["mask"][:, :, None]
    expected = attention_health(attention, logits, allowed)
    torch.testing.assert_close(entropy, expected[0])
    torch.testing.assert_close(abs_logit, expected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["diversity"],
                               diversity_loss(attention.transpose(0, 1), batch["mask"]))


def test_dmin_reports_the_same_health_as_camn_without_routing() -> None:
    """P = 1 and alpha = 0 make camn-dense DMIN (same weights): their health must agree too."""
    torch.manual_seed(0)
    dmin = build_model("dmin", SPEC, embed_dim=D, mlp_hidden=[16, 8])
    camn = make_model("camn-dense-loss")
    camn.load_state_dict(dmin.state_dict())
    batch = make_batch(10)
    ours, theirs = camn.eval().evaluate(batch).aux_terms, dmin.eval().evaluate(batch).aux_terms
    assert set(ours) == set(theirs)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])


# ------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", READINGS)
def test_small_batch_can_be_overfit(name: str) -> None:
    """64 random samples are memorised within 150 Adam steps (stops once BCE < 0.02)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a shared machine
    try:
        model = make_model(name)
        batch = make_batch(64, seed=5)
        optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(150):
            output = model(batch, extra_losses=True)
            loss = nn.functional.binary_cross_entropy_with_logits(output.logits, batch["label"])
            if loss.item() < 0.02:
                break
            optimiser.zero_grad()
            (loss + output.aux_loss).backward()
            optimiser.step()
        assert loss.item() < 0.02
    finally:
        torch.set_num_threads(threads)
