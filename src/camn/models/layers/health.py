"""Attention health: whether attention heads single anything out (normalised entropy and
mean |logit| per head), for the models' evaluation pass (``CTRModel.evaluate``).

Shapes: H heads, K keys a row may attend, B batch, L history length, d head width.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def attention_health(
    attention: torch.Tensor, logits: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether attention heads single anything out: per head, normalised entropy and |logit|.

    attention and logits (H, ..., K) are head-major with the keys last (logits: what the
    softmax saw, any scaling included); allowed (..., K) bool marks the keys each row may
    attend (real keys, not in the future for a causal block; no key for a padding query).
    Returns two detached (H,) tensors:

    - entropy_h: over the rows with at least 2 allowed keys, the mean of the row's entropy
      divided by log(its number of allowed keys): 1 is uniform over what the row may see, 0 is
      all weight on one key;
    - abs_logit_h: the mean |logit| over the allowed (row, key) entries (near 0: uniform).

    NaN where there is nothing to average (every row has at most one allowed key).
    """
    keys = allowed.sum(-1)  # (...)
    rows = (keys > 1).to(attention.dtype)
    entropy = torch.special.entr(attention).sum(-1) / keys.clamp(min=2).log()  # (H, ...)
    entropy = (entropy * rows).flatten(1).sum(1) / rows.sum()
    magnitude = torch.where(allowed, logits.abs(), 0.0).flatten(1).sum(1)
    return entropy, magnitude / allowed.sum()


@torch.no_grad()
def unnormalised_health(
    weights: torch.Tensor, allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_health`` of weights that are no distribution (DIN's raw scores, any sign).

    weights (H, ..., K) are the logits as they are; the entropy is that of the shares
    |w_j| / sum |w| over the allowed keys: a concentration measure of the unnormalised weights
    (1 = equal magnitudes, 0 = one key holds all), not the entropy of a softmax, which these
    weights never pass through. A row whose weights are all 0 has shares 0.
    """
    magnitude = torch.where(allowed, weights.abs(), 0.0)
    total = magnitude.sum(-1, keepdim=True).clamp(min=torch.finfo(weights.dtype).tiny)
    return attention_health(magnitude / total, weights, allowed)


def health_terms(entropy: torch.Tensor, abs_logit: torch.Tensor) -> dict[str, torch.Tensor]:
    """The names the evaluation pass reports ``attention_health``'s two (H,) tensors under."""
    return {"attention_entropy": entropy, "attention_abs_logit": abs_logit}
