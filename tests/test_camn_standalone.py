"""camn-standalone (the paper's Eq. 1-9 as a model of their own) checked equation by equation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from camn.models import FeatureSpec, build_model
from camn.models.camn_standalone import CAMNStandalone
from camn.models.layers import attention_health, diversity_loss, keep_top_q
from camn.models.registry import resolved_options

K, D, L = 4, 6, 8
SPEC = FeatureSpec(("item", "cat", "brand", "price"), (50, 9, 12, 7), L)


def make_batch(spec: FeatureSpec, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random left-aligned histories of 1..L items (one full), padding ids 0."""
    generator = torch.Generator().manual_seed(seed)
    highs = torch.tensor(spec.vocab_sizes)

    def ids(*shape: int) -> torch.Tensor:
        unit = torch.rand(*shape, len(highs), generator=generator)
        return 1 + (unit * (highs - 1)).long()  # ids in [1, vocab)

    lengths = torch.randint(1, spec.max_len + 1, (size,), generator=generator)
    lengths[0] = spec.max_len
    mask = torch.arange(spec.max_len)[None, :] < lengths[:, None]
    return {
        "index": torch.arange(size),
        "history": ids(size, spec.max_len) * mask[..., None],
        "mask": mask,
        "target": ids(size),
        "label": torch.randint(0, 2, (size,), generator=generator).float(),
        "user": torch.arange(size),
    }


def make_model(name: str = "camn-standalone", seed: int = 0, **options) -> CAMNStandalone:
    torch.manual_seed(seed)
    model = build_model(name, SPEC, embed_dim=D, mlp_hidden=[16, 8], **options)
    with torch.no_grad():  # larger embeddings than the 1e-2 init, so attention is not uniform
        model.embedding.table.weight.normal_()
    return model


def test_registered_presets_and_json_options() -> None:
    assert resolved_options("camn-standalone-route")["alpha"] == 0.0
    assert resolved_options("camn-standalone-loss")["routing"] is False
    assert resolved_options("camn-standalone-paper")["pooled_history"] is False
    assert resolved_options("camn-standalone-residual")["residual_norm"] is True
    options = resolved_options("camn-standalone")
    assert options["pooled_history"] is True  # the shared head, DMIN's output network
    assert options["alpha"] == 1e-4 and options["q"] is None and options["scale_side"] == "key"
    assert json.loads(json.dumps(options)) == {**options, "mlp_hidden": [200, 80]}
    model = build_model("camn-standalone", SPEC, **json.loads(json.dumps(options)))
    assert model.router.q == math.ceil(K / 2)
    assert [m.out_features for m in model.head.net if isinstance(m, nn.Linear)] == [200, 80, 1]
    assert isinstance(model.head.net[0], nn.BatchNorm1d)
    width = K * 18
    assert model.head.net[0].num_features == 3 * width + width  # [t, s, t * s, interests]
    paper = build_model("camn-standalone-paper", SPEC)
    assert paper.head.net[0].num_features == width + width  # [t, interests]


@pytest.mark.parametrize(
    "options",
    [{"q": 0}, {"q": K + 1}, {"scale_side": "both"}, {"diversity_pairs": "some"}],
)
def test_bad_options_are_rejected(options: dict) -> None:
    with pytest.raises(ValueError):
        build_model("camn-standalone", SPEC, **options)


@pytest.mark.parametrize("q", range(1, K + 1))
def test_routing_rows_sum_to_one_with_k_minus_q_zeros(q: int) -> None:
    model = make_model(q=q)
    items = model.embed(make_batch(SPEC, 16))[0]  # (B, L, k, d)
    scores = model.route(items)  # (B, L, k)
    torch.testing.assert_close(scores.sum(-1), torch.ones(16, L))
    assert torch.all((scores == 0).sum(-1) == K - q)
    # At real items the zeros are the k - q smallest routing logits and the rest is their
    # softmax (Eq. 2-3). Padding items all have the same logits, so ties make the order moot.
    real = make_batch(SPEC, 16)["mask"]
    logits, scores = model.router.logits(items)[real], scores[real]  # (N, k)
    order = logits.argsort(-1)
    assert torch.all(scores.gather(-1, order[:, : K - q]) == 0)
    expected = torch.softmax(logits.gather(-1, order[:, K - q :]), dim=-1)
    torch.testing.assert_close(scores.gather(-1, order[:, K - q :]), expected)


def test_keep_top_q_passes_no_gradient_to_dropped_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 6, requires_grad=True)
    scores = torch.softmax(keep_top_q(logits, 2), dim=-1)
    (scores * torch.randn(5, 7, 6)).sum().backward()
    kept = scores > 0
    assert torch.all(kept.sum(-1) == 2)
    assert torch.all(logits.grad[~kept] == 0)
    assert torch.all(logits.grad[kept] != 0)


def test_routing_weights_of_a_never_kept_attribute_get_no_gradient() -> None:
    model = make_model(q=3)
    router = model.router
    with torch.no_grad():  # LayerNorm(X) = 1 for every item, so the logits are W_h's row sums
        router.norm.weight.zero_()
        router.norm.bias.fill_(1.0)
        router.weight.weight.normal_(std=0.01)
        router.weight.weight[1] = -1.0  # attribute 1 is never in the top q = 3 of k = 4
    batch = make_batch(SPEC, 8)
    output = model(batch, extra_losses=True)
    assert torch.all(output.routing[..., 1] == 0)
    (output.logits.sum() + output.aux_loss).backward()
    grad = router.weight.weight.grad  # (k, k*d): row r is W_h's column for attribute r
    assert torch.all(grad[1] == 0)
    assert torch.all(grad[[0, 2, 3]].abs().sum(-1) > 0)


def naive_logits(model: CAMNStandalone, items, scores, mask, side: str) -> torch.Tensor:
    """Eq. 4's logits as a loop over samples and heads."""
    batch = items.shape[0]
    out = torch.empty(batch, K, L, L)
    for b in range(batch):
        for r in range(K):
            x = items[b, :, r]  # (L, d)
            queries, keys = x @ model.query.weight[r], x @ model.key.weight[r]
            dots = queries @ keys.T / math.sqrt(D)  # (L, L)
            p = scores[b, :, r]
            scaled = dots * (p[None, :] if side == "key" else p[:, None])
            out[b, r] = scaled.masked_fill(~mask[b][None, :], float("-inf"))
    return out


@pytest.mark.parametrize("side", ["key", "query"])
def test_scaled_logits_equal_naive_loop(side: str) -> None:
    model = make_model(scale_side=side)
    batch = make_batch(SPEC, 6)
    items = torch.randn(6, L, K, D)
    scores = model.route(items)
    got = model.attention_logits(items, scores, batch["mask"])
    torch.testing.assert_close(got, naive_logits(model, items, scores, batch["mask"], side))


@pytest.mark.parametrize("residual_norm", [False, True])
def test_refine_equals_eq5_and_eq6(residual_norm: bool) -> None:
    model = make_model(residual_norm=residual_norm)
    mask = make_batch(SPEC, 4)["mask"]
    items = torch.randn(4, L, K, D)
    scores = model.route(items)
    refined, attention, _ = model.refine(items, scores, mask)
    logits = naive_logits(model, items, scores, mask, "key")
    ffn = model.ffn
    for b in range(4):
        real = mask[b]
        for r in range(K):
            a = torch.softmax(logits[b, r][:, real], dim=-1)  # (L, l)
            torch.testing.assert_close(attention[b, r][:, real], a)
            assert torch.all(attention[b, r][:, ~real] == 0)
            x = items[b, :, r]
            hat = a @ (x[real] @ model.value.weight[r])  # Eq. 5
            if residual_norm:
                hat = model.norms[0](hat + x)
                expected = model.norms[1](hat + ffn[2](torch.relu(ffn[0](hat))))
            else:
                expected = torch.relu(hat @ ffn[0].weight.T + ffn[0].bias) @ ffn[2].weight.T
                expected = expected + ffn[2].bias  # Eq. 6
            torch.testing.assert_close(refined[b, r], expected)


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
    mask = make_batch(SPEC, 5)["mask"]
    attention = torch.softmax(torch.randn(5, 3, L, L).masked_fill(~mask[:, None, None], -1e9), -1)
    total = torch.zeros(())
    for b in range(5):
        for i in range(3):
            for j in range(3):
                if not (distinct and i == j):
                    total += (attention[b, i] * attention[b, j])[mask[b]].sum()
    expected = total / 9 / 5
    torch.testing.assert_close(diversity_loss(attention, mask, distinct), expected)


@pytest.mark.parametrize("pairs", ["all", "distinct"])
def test_forward_aux_loss_is_alpha_times_diversity_of_the_attention(pairs: str) -> None:
    model = make_model(alpha=0.25, diversity_pairs=pairs)
    batch = make_batch(SPEC, 8)
    output = model(batch, extra_losses=True)
    history, _ = model.embed(batch)
    _, attention, _ = model.refine(history, model.route(history), batch["mask"])
    expected = diversity_loss(attention, batch["mask"], distinct=pairs == "distinct")
    torch.testing.assert_close(output.aux_terms["diversity"], expected)
    torch.testing.assert_close(output.aux_loss, 0.25 * expected)
    assert output.aux_loss.requires_grad
    plain = model(batch)  # not asked: the same logits, no extra loss
    torch.testing.assert_close(plain.logits, output.logits, rtol=0, atol=0)
    assert plain.aux_loss.item() == 0.0 and plain.aux_terms == {}


def test_camn_route_has_no_diversity_term() -> None:
    output = make_model("camn-standalone-route")(make_batch(SPEC, 8), extra_losses=True)
    assert output.aux_loss.shape == () and output.aux_loss.item() == 0.0
    assert output.routing is not None and output.aux_terms["diversity"] > 0


def test_camn_loss_has_no_router_and_unit_scores() -> None:
    model = make_model("camn-standalone-loss")
    batch = make_batch(SPEC, 8)
    assert model.router is None
    history, _ = model.embed(batch)
    assert torch.all(model.route(history) == 1)
    output = model(batch, extra_losses=True)
    assert output.routing is None and output.aux_loss.item() > 0
    # P = 1: the logits are plain scaled dot products.
    logits = model.attention_logits(history, model.route(history), batch["mask"])
    queries = torch.einsum("blrd,rde->brle", history, model.query.weight)
    keys = torch.einsum("blrd,rde->brle", history, model.key.weight)
    plain = queries @ keys.transpose(-1, -2) / math.sqrt(D)
    real = batch["mask"][:, None, None, :].expand_as(plain)
    torch.testing.assert_close(logits[real], plain[real])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("camn-standalone", {}),
        ("camn-standalone", {"scale_side": "query", "residual_norm": True}),
        ("camn-standalone", {"pooled_history": False, "normalize_items": True}),
        ("camn-standalone-loss", {}),
    ],
)
def test_padding_positions_do_not_change_any_output(name: str, options: dict) -> None:
    model = make_model(name, **options)
    batch = make_batch(SPEC, 16)
    noisy = dict(batch)
    garbage = make_batch(SPEC, 16, seed=1)["history"].clamp(min=1)
    noisy["history"] = torch.where(batch["mask"][..., None], batch["history"], garbage)
    assert not torch.equal(noisy["history"], batch["history"])
    for train in (True, False):
        model.train(train)
        clean, dirty = model(batch, extra_losses=True), model(noisy, extra_losses=True)
        torch.testing.assert_close(dirty.logits, clean.logits)
        torch.testing.assert_close(dirty.aux_loss, clean.aux_loss)
        if clean.routing is not None:
            torch.testing.assert_close(dirty.routing, clean.routing)


def test_same_seed_same_outputs_and_other_seed_differs() -> None:
    batch = make_batch(SPEC, 8)
    first, second, other = make_model(seed=3), make_model(seed=3), make_model(seed=4)
    torch.testing.assert_close(first(batch).logits, second(batch).logits, rtol=0, atol=0)
    assert not torch.allclose(first(batch).logits, other(batch).logits)


def test_output_shapes_ranges_and_attribute_scores() -> None:
    model = make_model().eval()
    batch = make_batch(SPEC, 10)
    output = model(batch)
    assert output.logits.shape == (10,) and torch.isfinite(output.logits).all()
    probabilities = torch.sigmoid(output.logits)
    assert torch.all((probabilities > 0) & (probabilities < 1))
    assert output.routing.shape == (10, L, K)
    assert torch.all(output.routing[~batch["mask"]] == 0)
    real_rows = output.routing[batch["mask"]]
    torch.testing.assert_close(real_rows.sum(-1), torch.ones(len(real_rows)))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("camn-standalone", {}),
        ("camn-standalone", {"residual_norm": True, "scale_side": "query", "activation": "prelu"}),
        ("camn-standalone-paper", {"normalize_items": True}),
        ("camn-standalone-loss", {}),
    ],
)
def test_gradients_reach_every_parameter(name: str, options: dict) -> None:
    model = make_model(name, **options)
    batch = make_batch(SPEC, 16)
    output = model(batch, extra_losses=True)
    loss = nn.functional.binary_cross_entropy_with_logits(output.logits, batch["label"])
    (loss + output.aux_loss).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, parameter_name


def test_small_batch_can_be_overfit() -> None:
    """64 random samples are memorised within 200 Adam steps (stops once BCE < 0.01)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a shared machine
    try:
        model = make_model()
        batch = make_batch(SPEC, 64, seed=5)
        optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(200):
            output = model(batch, extra_losses=True)
            loss = nn.functional.binary_cross_entropy_with_logits(output.logits, batch["label"])
            if loss.item() < 0.01:
                break
            optimiser.zero_grad()
            (loss + output.aux_loss).backward()
            optimiser.step()
        assert loss.item() < 0.01
        assert torch.equal((output.logits > 0).float(), batch["label"])  # training accuracy 1
    finally:
        torch.set_num_threads(threads)


def test_health_is_reported_per_head_only_when_asked() -> None:
    model = make_model("camn-standalone").eval()
    batch = make_batch(SPEC, 10)
    assert model(batch).aux_terms == {}
    terms = model.evaluate(batch).aux_terms
    history, _ = model.embed(batch)
    _, attention, logits = model.refine(history, model.route(history), batch["mask"])
    mask = batch["mask"]
    allowed = mask[:, None, :] & mask[:, :, None]
    entropy, abs_logit = attention_health(attention.transpose(0, 1), logits.transpose(0, 1),
                                          allowed)
    torch.testing.assert_close(terms["attention_entropy"], entropy)
    torch.testing.assert_close(terms["attention_abs_logit"], abs_logit)
    torch.testing.assert_close(terms["diversity"], diversity_loss(attention, mask))
    assert entropy.shape == (model.num_slots,) and torch.all(entropy <= 1 + 1e-6)
