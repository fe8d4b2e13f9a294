"""The shared layers checked against their formulas and naive per-head loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camn.models.layers import (
    MLP,
    AttributeEmbedding,
    Dice,
    HeadwiseLinear,
    NextClickLoss,
    OutputHead,
    Packing,
    TargetAttention,
    make_activation,
    masked_softmax,
    pool_history,
)


def test_attribute_embedding_pads_with_zeros_and_offsets_each_slot() -> None:
    torch.manual_seed(0)
    vocab_sizes = [7, 3, 5]
    layer = AttributeEmbedding(vocab_sizes, dim=4)
    ids = torch.tensor([[[0, 2, 4], [6, 0, 1]], [[1, 1, 0], [0, 0, 0]]])  # (2, 2, 3)
    vectors = layer(ids)  # (2, 2, 3, 4)
    assert vectors.shape == (2, 2, 3, 4)
    assert torch.all(vectors[ids == 0] == 0)
    offsets = [0, 7, 10]
    for index in torch.nonzero(ids != 0):
        slot = int(index[-1])
        row = offsets[slot] + int(ids[tuple(index)])
        torch.testing.assert_close(vectors[tuple(index)], layer.table.weight[row])
    # Slot tables do not overlap: id 1 of each slot is a different row.
    ones = layer(torch.ones(1, 3, dtype=torch.long))[0]
    assert not torch.allclose(ones[0], ones[1]) and not torch.allclose(ones[1], ones[2])


def test_attribute_embedding_padding_gets_no_gradient() -> None:
    layer = AttributeEmbedding([4, 4], dim=3)
    layer(torch.tensor([[0, 2], [0, 0]])).sum().backward()
    grad = layer.table.weight.grad
    assert torch.all(grad[[0, 4]] == 0)  # the padding rows of both slots
    assert torch.all(grad[6] != 0)  # slot 1, id 2


def test_masked_softmax_matches_softmax_over_kept_and_zeroes_empty_rows() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    weights = masked_softmax(logits, mask)
    expected = torch.softmax(logits[0, [0, 1, 3]], dim=0)
    torch.testing.assert_close(weights[0, [0, 1, 3]], expected)
    assert torch.all(weights[0, [2, 4]] == 0)
    assert torch.all(weights[1] == 0)
    torch.testing.assert_close(weights[2], torch.softmax(logits[2], dim=0))
    (weights * torch.randn(3, 5)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[1] == 0)


def test_pool_history_sums_or_averages_the_real_positions_only() -> None:
    vectors = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[True, False, True, False]])
    real = vectors[0, [0, 2]]  # rows [0, 1, 2] and [6, 7, 8]
    torch.testing.assert_close(pool_history(vectors, mask), torch.tensor([[6.0, 8.0, 10.0]]))
    torch.testing.assert_close(pool_history(vectors, mask, "mean"), real.mean(0, keepdim=True))
    packed = Packing(mask).sum_per_sample(Packing(mask).pack(vectors))  # DMIN's packed rows
    torch.testing.assert_close(packed, pool_history(vectors, mask))


def test_headwise_linear_equals_one_linear_map_per_head() -> None:
    torch.manual_seed(0)
    layer = HeadwiseLinear(num_heads=3, in_dim=4, out_dim=5)
    x = torch.randn(2, 6, 3, 4)
    out = layer(x)
    assert out.shape == (2, 6, 3, 5)
    for head in range(3):
        expected = nn.functional.linear(x[:, :, head], layer.weight[head].T, layer.bias[head])
        torch.testing.assert_close(out[:, :, head], expected)
    no_bias = HeadwiseLinear(3, 4, 5, bias=False)
    torch.testing.assert_close(no_bias(x)[:, :, 1], x[:, :, 1] @ no_bias.weight[1])


def test_dice_follows_its_formula_with_batch_statistics() -> None:
    torch.manual_seed(0)
    dice = Dice(4)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.0, 0.1, 0.5, -0.2]))
    x = torch.randn(16, 4) * 3 + 1
    mean, var = x.mean(0), x.var(0, unbiased=False)
    p = torch.sigmoid((x - mean) / torch.sqrt(var + 1e-8))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    # Any leading shape is normalised per feature.
    assert dice(torch.randn(2, 8, 4)).shape == (2, 8, 4)


def test_mlp_shapes_input_norm_and_activations() -> None:
    mlp = MLP(10, hidden=[8, 6], out_dim=1, activation="prelu", input_norm=True)
    assert isinstance(mlp.net[0], nn.BatchNorm1d)
    assert [m.out_features for m in mlp.net if isinstance(m, nn.Linear)] == [8, 6, 1]
    assert mlp(torch.randn(5, 10)).shape == (5, 1)
    plain = MLP(10, hidden=(), out_dim=3)
    assert len(plain.net) == 1 and plain(torch.randn(2, 10)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("tanhh", 3)


def test_output_head_reads_target_pooled_product_then_features_in_that_order() -> None:
    """[t, s, t * s, features] into BatchNorm, Linear 2 -> ... -> 1: checked by hand through
    the first Linear's weight columns (no hidden layer, batch norm off)."""
    head = OutputHead(2, 3, input_norm=False, hidden=())
    assert head.in_dim == 3 * 2 + 3 and len(head.net) == 1
    weight, bias = head.net[0].weight[0], head.net[0].bias[0]
    target, summed = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])
    features = torch.tensor([[0.5, 0.0, 4.0]])
    inputs = torch.tensor([1.0, 2.0, 3.0, -1.0, 3.0, -2.0, 0.5, 0.0, 4.0])
    expected = (inputs * weight).sum() + bias
    torch.testing.assert_close(head(features, target, summed), expected[None])
    paper = OutputHead(2, 3, pooled_history=False, input_norm=False, hidden=())
    assert paper.in_dim == 2 + 3  # [t, features]: the summed history is not read
    weight, bias = paper.net[0].weight[0], paper.net[0].bias[0]
    expected = (torch.cat([target[0], features[0]]) * weight).sum() + bias
    torch.testing.assert_close(paper(features, target, summed), expected[None])


def test_output_head_default_is_dmins_network_and_static_heads_read_features_only() -> None:
    head = OutputHead(6, 12)
    layers = [type(m).__name__ for m in head.net]
    assert layers == ["BatchNorm1d", "Linear", "Dice", "Linear", "Dice", "Linear"]
    assert head.net[0].num_features == 3 * 6 + 12
    assert [m.out_features for m in head.net if isinstance(m, nn.Linear)] == [200, 80, 1]
    assert head(torch.randn(5, 12), torch.randn(5, 6), torch.randn(5, 6)).shape == (5,)
    static = OutputHead(0, 7, pooled_history=False, activation="relu", with_target=False)
    assert static.net[0].num_features == 7 and isinstance(static.net[2], nn.ReLU)
    assert static(torch.randn(4, 7)).shape == (4,)
    with pytest.raises(ValueError, match="pooled_history needs the target"):
        OutputHead(0, 7, with_target=False)


def next_click(
    loss: NextClickLoss, tensors: tuple[torch.Tensor, ...], mask: torch.Tensor, dense: bool
) -> torch.Tensor:
    packing = Packing(mask, dense=dense)
    return loss(*(packing.pack(x) for x in tensors), packing)


def test_next_click_loss_on_packed_rows_equals_the_padded_form() -> None:
    """Packed rows (the CPU's) and every row, padding included (an accelerator's) give the
    same loss: 2 x the mean BCE over the pairs (t, t + 1) with a real next item."""
    torch.manual_seed(0)
    loss = NextClickLoss(4, 3, hidden=(5,)).eval()  # eval: batch norm with fixed statistics
    states, items, drawn = torch.randn(3, 5, 4), torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    mask = torch.arange(5)[None] < torch.tensor([5, 1, 3])[:, None]
    padded = next_click(loss, (states, items, drawn), mask, dense=True)
    packed = next_click(loss, (states, items, drawn), mask, dense=False)
    torch.testing.assert_close(packed, padded)
    pairs = [(b, t) for b in range(3) for t in range(4) if mask[b, t + 1]]  # 4 + 0 + 2 pairs
    assert len(pairs) == 6

    def score(b: int, t: int, x: torch.Tensor) -> torch.Tensor:
        return loss.net(torch.cat([states[b, t], x[b, t + 1]])[None])[0, 0]

    positive = torch.stack([score(b, t, items) for b, t in pairs])
    negative = torch.stack([score(b, t, drawn) for b, t in pairs])
    expected = -(torch.log(torch.sigmoid(positive)) + torch.log(1 - torch.sigmoid(negative)))
    torch.testing.assert_close(padded, expected.mean())
    single = (torch.arange(5) < 1).expand(3, 5)  # one item each: no pair, loss 0
    assert next_click(loss, (states, items, drawn), single, dense=False) == 0


def naive_target_attention(
    layer: TargetAttention, sequences: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """TargetAttention written as a loop over heads, samples and positions."""
    batch, heads, length, _ = sequences.shape
    pooled = torch.zeros(batch, heads, layer.dim)
    weights = torch.zeros(batch, heads, length)
    for b in range(batch):
        for h in range(heads):
            scores = []
            for j in range(length):
                query_in = target[b]
                if layer.position is not None:
                    query_in = torch.cat([query_in, layer.position[h, j]])
                query = query_in
                if layer.query is not None:
                    query = query_in @ layer.query.weight[h] + layer.query.bias[h]
                x = sequences[b, h, j]
                hidden = torch.cat([query, x, query - x, query * x])
                for dense in layer.hidden:
                    hidden = torch.sigmoid(hidden @ dense.weight[h] + dense.bias[h])
                scores.append(hidden @ layer.score.weight[h] + layer.score.bias[h])
            score = torch.cat(scores)  # (L,)
            if layer.softmax:
                w = torch.zeros(length)
                w[mask[b]] = torch.softmax(score[mask[b]], dim=0)
            else:
                w = score * mask[b]
            weights[b, h] = w
            pooled[b, h] = w @ sequences[b, h]
    return pooled, weights


@pytest.mark.parametrize(
    ("positional", "softmax", "project_target", "target_dim"),
    [(True, True, True, 12), (False, False, False, 4), (False, True, True, 12)],
)
def test_target_attention_equals_naive_loop(
    positional: bool, softmax: bool, project_target: bool, target_dim: int
) -> None:
    torch.manual_seed(0)
    layer = TargetAttention(
        num_heads=3,
        dim=4,
        target_dim=target_dim,
        max_len=6,
        hidden=(5, 3),
        positional=positional,
        softmax=softmax,
        project_target=project_target,
    )
    if layer.position is not None:
        nn.init.normal_(layer.position)
    sequences, target = torch.randn(2, 3, 5, 4), torch.randn(2, target_dim)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    expected_pooled, expected_weights = naive_target_attention(layer, sequences, target, mask)
    # the packed rows of the CPU, and every row: the path taken on accelerators
    dense = Packing(mask, dense=True)
    for pooled, weights in (layer(sequences, target, mask), layer.forward_packed(
            dense.pack_heads(sequences.transpose(0, 1)), target, dense)):
        torch.testing.assert_close(weights, expected_weights)
        torch.testing.assert_close(pooled, expected_pooled)
        assert torch.all(weights[0, :, 3:] == 0)


def test_target_attention_rejects_identity_query_of_wrong_width() -> None:
    with pytest.raises(ValueError, match="project_target=False"):
        TargetAttention(2, dim=4, target_dim=8, max_len=5, positional=False, project_target=False)
