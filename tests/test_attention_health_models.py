"""Attention health of the baselines with attention: DIN, DIEN, DHAN, MIND, ComiRec-SA."""

from __future__ import annotations

import math

import pytest
import torch

from camn.models import FeatureSpec, build_model
from camn.models.base import CTRModel
from camn.models.layers import item_vectors, unnormalised_health

K, D, LENGTH = 3, 4, 6
SPEC = FeatureSpec(tuple(f"a{i}" for i in range(K)), (20,) * K, LENGTH)
LENGTHS = [1, 3, 6, 5, 2, 4]
HEADS = {"din": 1, "din-paper": 1, "dien": 1, "dhan": 2, "mind": 1, "mind-paper": 1,
         "comirec-sa": K, "comirec-sa-paper": K}
MODELS = ["din", "dien", "dhan", "mind", "comirec-sa"]
HEALTH = {"attention_entropy", "attention_abs_logit"}

torch.set_num_threads(1)


def make_model(name: str) -> CTRModel:
    torch.manual_seed(0)
    hidden = {} if name.startswith("mind") or name.startswith("comirec") else {
        "attention_hidden": [8, 4]}
    return build_model(name, SPEC, embed_dim=D, mlp_hidden=[8], **hidden).eval()


def make_batch(lengths: list[int] = LENGTHS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-aligned histories of ``lengths``; padding ids 0."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(LENGTH)[None] < torch.tensor(lengths)[:, None]
    shape = (len(lengths), LENGTH, K)
    return {
        "history": torch.randint(2, 20, shape, generator=g) * mask[..., None],
        "history_negative": torch.randint(2, 20, shape, generator=g) * mask[..., None],
        "mask": mask,
        "target": torch.randint(2, 20, (len(lengths), K), generator=g),
        "label": torch.randint(0, 2, (len(lengths),), generator=g).float(),
    }


def health(model: CTRModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return model.evaluate(batch).aux_terms


def constant_scores(attention: torch.nn.Module, value: float) -> None:
    """Every position of a ``TargetAttention`` gets the score ``value``."""
    with torch.no_grad():
        attention.score.weight.zero_()
        attention.score.bias.fill_(value)


@pytest.mark.parametrize("name", list(HEADS))
def test_health_is_per_head_and_only_when_asked(name: str) -> None:
    model, batch = make_model(name), make_batch()
    assert not HEALTH & set(model(batch).aux_terms)  # evaluation without asking pays nothing
    terms = health(model, batch)
    assert not HEALTH & set(model(batch).aux_terms)  # the evaluation pass leaves no state
    assert set(terms) == HEALTH
    entropy, abs_logit = terms["attention_entropy"], terms["attention_abs_logit"]
    assert entropy.shape == abs_logit.shape == (HEADS[name],)
    assert torch.all((entropy >= 0) & (entropy <= 1 + 1e-6))
    assert torch.all(abs_logit.isfinite() & (abs_logit > 0))


@pytest.mark.parametrize("name", MODELS)
def test_logits_are_bit_identical_with_and_without_health(name: str) -> None:
    model, batch = make_model(name), make_batch()
    plain = model(batch).logits
    reported = model.evaluate(batch).logits
    assert torch.equal(plain, reported)


@pytest.mark.parametrize("name", MODELS)
def test_padding_ids_change_no_health_value(name: str) -> None:
    model, batch = make_model(name), make_batch()
    garbage = dict(batch)
    noise = torch.randint(2, 20, batch["history"].shape, generator=torch.Generator().manual_seed(9))
    garbage["history"] = torch.where(batch["mask"][..., None], batch["history"], noise)
    clean, dirty = health(model, batch), health(model, garbage)
    for key in HEALTH:
        torch.testing.assert_close(dirty[key], clean[key])


def test_unnormalised_health_on_a_hand_computed_example() -> None:
    """Shares |w| / sum |w| over the real keys; a row with one real key is left out of the
    entropy but counts in |logit|."""
    weights = torch.tensor([[[3.0, -1.0, 9.0], [2.0, 5.0, 7.0]]])  # (H=1, rows=2, keys=3)
    allowed = torch.tensor([[True, True, False], [True, False, False]])
    entropy, abs_logit = unnormalised_health(weights, allowed)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    torch.testing.assert_close(entropy, torch.tensor([expected]))
    torch.testing.assert_close(abs_logit, torch.tensor([(3 + 1 + 2) / 3]))
    one_key = unnormalised_health(torch.tensor([[[0.0, 4.0, 1e-6]]]), torch.ones(1, 3).bool())
    assert one_key[0].item() == pytest.approx(0.0, abs=1e-4)  # one key holds all


def test_din_equal_scores_are_uniform_and_magnitude_is_the_raw_score() -> None:
    model = make_model("din")
    constant_scores(model.attention, -0.7)
    terms = health(model, make_batch())  # the length-1 history is left out of the entropy
    torch.testing.assert_close(terms["attention_entropy"], torch.tensor([1.0]))
    torch.testing.assert_close(terms["attention_abs_logit"], torch.tensor([0.7]))


def test_dien_reports_its_softmax_over_the_scores_it_normalised() -> None:
    model = make_model("dien")
    constant_scores(model.attention, 0.5)
    terms = health(model, make_batch())
    assert model.attention.softmax  # the scores are recomputed with the softmax off, then on
    torch.testing.assert_close(terms["attention_entropy"], torch.tensor([1.0]))
    torch.testing.assert_close(terms["attention_abs_logit"], torch.tensor([0.5]))


def test_dhan_reports_item_then_group_level() -> None:
    model = make_model("dhan")
    constant_scores(model.item_attention, 0.3)
    constant_scores(model.group_attention, -2.0)
    batch = make_batch([4, 3, 2])
    groups = torch.tensor([[5, 5, 6, 7, 0, 0], [8, 9, 8, 0, 0, 0], [4, 4, 0, 0, 0, 0]])
    batch["history"][:, :, model.group_slot] = groups  # 3, 2 and 1 groups
    terms = health(model, batch)
    torch.testing.assert_close(terms["attention_entropy"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(terms["attention_abs_logit"], torch.tensor([0.3, 2.0]))
    # unequal group scores: the entropy of the group weights over the groups present, rows
    # with 2 or more groups only
    with torch.no_grad():
        model.embedding.table.weight.normal_(std=3.0)
        model.group_attention.score.weight.normal_(std=10.0)
    weights = model.interests(batch, *item_vectors(*model.embed(batch))).group_weights
    by_row = [torch.special.entr(weights[row]).sum() / math.log(n) for row, n in [(0, 3), (1, 2)]]
    entropy = health(model, batch)["attention_entropy"][1]
    torch.testing.assert_close(entropy, (by_row[0] + by_row[1]) / 2)
    assert entropy < 0.99


def test_mind_reports_the_coupling_over_capsules_per_behaviour() -> None:
    """With S = 0 the capsules are 0, the logits stay at their start b and the coupling of
    position j is softmax(b_j): entropy and |b| by hand over the real behaviours."""
    model = make_model("mind")
    start = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, -1.0, 0.0],
                          [0.0, 3.0, 0.0], [1.0, 1.0, -1.0], [0.5, 0.0, 0.0]])
    with torch.no_grad():
        model.bilinear.weight.zero_()
        model.initial_logits.copy_(start)
    lengths = [1, 3, 2]
    terms = health(model, make_batch(lengths))

    def entropy(row: list[float]) -> float:
        total = sum(math.exp(v) for v in row)
        weights = [math.exp(v) / total for v in row]
        return -sum(w * math.log(w) for w in weights) / math.log(K)

    rows = [start[j].tolist() for n in lengths for j in range(n)]
    expected = sum(entropy(r) for r in rows) / len(rows)
    magnitude = sum(abs(v) for r in rows for v in r) / (len(rows) * K)
    torch.testing.assert_close(terms["attention_entropy"], torch.tensor([expected]))
    torch.testing.assert_close(terms["attention_abs_logit"], torch.tensor([magnitude]))


def test_comirec_heads_are_reported_in_order() -> None:
    model = make_model("comirec-sa")
    with torch.no_grad():
        model.heads.weight.zero_()
        model.heads.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    terms = health(model, make_batch())
    torch.testing.assert_close(terms["attention_entropy"], torch.ones(K))
    torch.testing.assert_close(terms["attention_abs_logit"], torch.tensor([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("name", ["pnn", "wide-deep", *MODELS, "dmin", "camn"])
def test_the_evaluation_pass_is_forward_without_gradients(name: str) -> None:
    """``evaluate`` scores as ``forward`` does, builds no graph, and a model without attention
    heads (PNN, Wide&Deep) adds nothing to it."""
    torch.manual_seed(0)
    model, batch = build_model(name, SPEC, embed_dim=D, mlp_hidden=[8]).eval(), make_batch()
    evaluated = model.evaluate(batch)
    assert torch.equal(evaluated.logits, model(batch).logits)
    assert not evaluated.logits.requires_grad
    assert bool(evaluated.aux_terms) == (name not in {"pnn", "wide-deep"})
