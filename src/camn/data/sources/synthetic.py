"""Synthetic clicks with a planted truth: which attribute drove every click.

The paper's premise (Sec. 1, Figure 1) is that one attribute of a history item drove each click,
and that knowing which one (the router, Eq. 1-3) helps predict the next click. Real data never
says; this source does. Every click is one of two kinds, and the driving slot of every click is
kept (``driver``, ``driver_kind``):

- **item-level** (kind 0, probability ``item_share``): the driver is a property of the clicked
  item, the same for every user (as Eq. 2 assumes), and the click repeats a *driving value* of the
  user's past. How an item's driving slot is set is ``item_driver``:

  - ``"category"`` (the default): the item's category decides which attribute matters for it
    (for some categories the brand, for others the style, the price band, or the category itself):
    category value c drives slot ``1 + c mod (k - 1)`` (with more than 12 non-id attributes, those
    past the 12th never drive). Categories are equally common, every item has a driving slot.
  - ``"salient"``: a few values of each non-id slot are *salient* (a famous brand); a
    ``salient_share`` of the items carry exactly one, in one slot, and that slot is their driver.

  The user's first item-level click is on an item drawn uniformly among those with a driving
  slot. Each later one, with probability ``follow``, repeats the driving value of one of the user's
  earlier item-level clicks (drawn uniformly, its *source*, ``Truth.followed``): the value the
  source's item carries in its own driving slot. Otherwise it is drawn as the first one. Where
  the item that repeats it comes from is ``follow_pool``:

  - ``"driver"``: uniformly among the items whose own driving slot is the source's
    and that carry the same value there (in a small group, possibly the same item again). It
    shares that value and nothing else beyond chance, and its driving slot is the source's, so a
    chain of such clicks repeats one (slot, value), and the clicked item's own attributes (under
    ``"category"``, its category) name the slot that brought it.
  - ``"value"`` (the default): uniformly among *all* items that carry the value in that slot,
    whatever slot drives them. The item then pulls the clicks that follow *it* through its own
    driving slot, so a chain can move from slot to slot. Under ``"salient"`` the two pools are
    the same items (a salient value is carried only by the items it drives), and so is every
    draw; the option matters under ``"category"``.

  The recorded ``driver`` of an item-level click is always the clicked item's own driving slot
  (``Truth.item_driver[item]``), a property of the item as Eq. 2 assumes: the attribute through
  which that item, once in a history, pulls later clicks. That is what a router of a history item
  can know, so routing recovery (the top routing weight of history item j against its planted
  driver) keeps its meaning in both modes. With ``"value"`` the click's *reason* (its source's
  driving slot, ``Truth.item_driver[Truth.item[Truth.followed]]``) can differ from its
  ``driver``; ``Truth.followed`` names the source, so the reason stays checkable.
- **user-level** (kind 1): each user has an emphasis over the k slots drawn from
  Dirichlet(``skew``) (small = one or two slots dominate) and ``liked`` values in every slot,
  drawn uniformly among the values some item carries. A click draws a slot from the user's
  emphasis, one of the user's liked values of that slot, then an item uniformly among those that
  carry it; its driver is that slot. The item id slot can be such a driver: each user also likes
  ``liked_items`` specific items, and a click whose drawn slot is 0 re-clicks one of them (a repeat
  purchase). The item id never drives an item-level click.

Each user makes ``3 + Poisson(clicks_per_user - 3)`` clicks at increasing times.

The default is the value-pool history mode (``item_driver="category", follow=0.9,
item_share=0.95, follow_pool="value", users=6000, clicks_per_user=5``): a click that follows an
earlier one lands on any item carrying the followed value, so the target's own attributes do not
name the slot that brought it.
The salience mode (``item_driver="salient", follow=0, item_share=0.5, users=3000,
clicks_per_user=12``) makes item-level clicks independent of the history: what the routing
recovers there, and how the default was chosen, is in docs/results.md ("Synthetic data").

Everything is vectorised with numpy: no loop over users or clicks (``follow_pool="value"``
takes one vectorised step per depth of the follow chains, a handful).
"""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass

import numpy as np
import polars as pl

from camn.argtypes import (
    float_at_least,
    fraction,
    int_at_least,
    positive_finite_float,
    positive_int,
)
from camn.data.raw import BadInputReport, DataError, RawData

NAME = "synthetic"
HELP = "generate clicks with a planted truth (the attribute that drove each click)"

SLOT_NAMES = ("category", "brand", "style", "price_band")
VOCAB_SIZES = (12, 40, 20, 8)  # values of each non-id slot, cycled when k > 5
MIN_CLICKS = 3
START_TIME = 1_400_000_000  # seconds; an arbitrary epoch in 2014
ITEM_LEVEL, USER_LEVEL = 0, 1
ITEM_DRIVERS = ("category", "salient")  # how an item's driving slot is set (module docstring)
FOLLOW_POOLS = ("driver", "value")  # which items a following click is drawn from (docstring)
# the salience store: ``generate``'s defaults until the value-pool store took their place
SALIENCE_STORE = {"users": 3000, "clicks_per_user": 12.0, "item_share": 0.5,
                  "item_driver": "salient", "follow": 0.0, "follow_pool": "driver"}
CATEGORY = 1  # the slot whose value names an item's driving slot under item_driver="category"


@dataclass
class Truth:
    """The planted truth behind a :func:`generate` run, as integer codes.

    Value codes of slot r index ``value_names[r]``; for slot 0 the value code is the item index.
    Rows of the per-click arrays are aligned with ``RawData.interactions``.

    user, item: (n,) user and item index of every click (names ``user_names``, ``item_names``).
    driver, driver_kind: (n,) the planted truth (also in the interactions).
    followed: (n,) row of the earlier click whose driving value an item-level click repeats, -1
        for a click that repeats none (a user-level click, or a fresh item-level one).
    item_values: (num_items, k) value code of every item in every slot.
    item_driver: (num_items,) the slot that drives an item-level click on the item (its salient
        slot, or the slot its category names), -1 if none.
    category_driver: (vocab of slot 1,) the slot each category value names; -1 everywhere under
        ``item_driver="salient"``.
    salient: (k, salient) salient value codes of every slot, -1 in slot 0; (k, 0) under
        ``item_driver="category"``, which has no salient values.
    emphasis: (num_users, k) each user's emphasis over the slots (rows sum to 1).
    liked: (num_users, k, m) each user's liked value codes of every slot, -1 padded.
    """

    user: np.ndarray
    item: np.ndarray
    driver: np.ndarray
    driver_kind: np.ndarray
    followed: np.ndarray
    item_values: np.ndarray
    item_driver: np.ndarray
    category_driver: np.ndarray
    salient: np.ndarray
    emphasis: np.ndarray
    liked: np.ndarray
    user_names: list[str]
    item_names: list[str]
    value_names: list[list[str]]


def attribute_names(k: int) -> list[str]:
    """``item_id``, then category, brand, style, price_band, then attr_5 .. attr_{k-1}."""
    return ["item_id", *[SLOT_NAMES[r - 1] if r <= len(SLOT_NAMES) else f"attr_{r}"
                         for r in range(1, k)]]


def _check(users: int, items: int, attributes: int, clicks_per_user: float, item_share: float,
           skew: float, liked: int, liked_items: int, salient: int, salient_share: float,
           item_driver: str, follow: float, follow_pool: str) -> None:
    vocab = min(VOCAB_SIZES[: attributes - 1], default=0)
    least_items = 2 * (MIN_CLICKS + liked_items)
    by_salience = item_driver == "salient"
    problems = [
        (item_driver not in ITEM_DRIVERS,
         f"item driver must be one of {', '.join(ITEM_DRIVERS)}, got {item_driver!r}"),
        (not 0 <= follow <= 1, f"follow must be in [0, 1], got {follow}"),
        (follow_pool not in FOLLOW_POOLS,
         f"follow pool must be one of {', '.join(FOLLOW_POOLS)}, got {follow_pool!r}"),
        (users < 1, f"users must be at least 1, got {users}"),
        (attributes < 2, f"attributes must be at least 2 (item id and one more), got {attributes}"),
        (clicks_per_user < MIN_CLICKS,
         f"clicks per user must be at least {MIN_CLICKS}, got {clicks_per_user}"),
        (not 0 <= item_share <= 1, f"item share must be in [0, 1], got {item_share}"),
        (not 0 <= salient_share <= 1, f"salient share must be in [0, 1], got {salient_share}"),
        (by_salience and item_share > 0 and salient_share == 0,
         "item-level clicks need a salient share above 0"),
        (skew <= 0, f"skew must be positive, got {skew}"),
        (liked < 1, f"liked must be at least 1, got {liked}"),
        (not 1 <= liked_items <= items, f"liked items must be in [1, items], got {liked_items}"),
        (not 1 <= salient < vocab, f"salient must be in [1, {vocab - 1}], got {salient}"),
        (items < least_items, f"items must be at least {least_items}, got {items}"),
    ]
    messages = [message for failed, message in problems if failed]
    if messages:
        raise ValueError("; ".join(messages))


def _make_items(rng: np.random.Generator, items: int, vocab: np.ndarray, salient: int,
                salient_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Value codes (items, k) and salient slot (items,) of every item.

    Codes 0 .. salient-1 of a slot are its salient values; the others are drawn with a Zipf-like
    popularity (weight 1 / rank). A salient item gets one salient value in one random slot.
    """
    k = len(vocab) + 1
    values = np.empty((items, k), dtype=np.int64)
    values[:, 0] = np.arange(items)
    for r, size in enumerate(vocab, start=1):  # k - 1 draws, not a hot path
        values[:, r] = salient + _zipf(rng, size - salient, items)
    is_salient = rng.random(items) < salient_share
    slot = np.where(is_salient, rng.integers(1, k, size=items), -1)
    rows = np.flatnonzero(is_salient)
    values[rows, slot[rows]] = rng.integers(0, salient, size=len(rows))
    return values, slot


def _zipf(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """n codes in [0, size) drawn with a Zipf-like popularity: weight 1 / rank."""
    weights = 1.0 / np.arange(1, size + 1)
    return rng.choice(size, size=n, p=weights / weights.sum())


def _make_items_by_category(rng: np.random.Generator, items: int, vocab: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value codes (items, k), driving slot (items,) and category -> slot map (categories,).

    Categories are drawn uniformly (so each driving slot gets about the same share of the items),
    the other slots with a Zipf-like popularity; category c names slot 1 + c mod (k - 1).
    """
    k = len(vocab) + 1
    values = np.empty((items, k), dtype=np.int64)
    values[:, 0] = np.arange(items)
    values[:, CATEGORY] = rng.integers(0, vocab[0], size=items)
    for r, size in enumerate(vocab[1:], start=CATEGORY + 1):  # k - 2 draws, not a hot path
        values[:, r] = _zipf(rng, size, items)
    category_driver = CATEGORY + np.arange(vocab[0]) % (k - 1)
    return values, category_driver[values[:, CATEGORY]], category_driver


def _roots(parent: np.ndarray) -> np.ndarray:
    """Follow ``parent`` pointers (parent[i] <= i, roots point to themselves) to the roots, by
    pointer jumping: about log2(longest chain) vectorised steps."""
    root = parent
    while True:
        jumped = root[root]
        if np.array_equal(jumped, root):
            return root
        root = jumped


def _follow(rng: np.random.Generator, user: np.ndarray, kind: np.ndarray, item: np.ndarray,
            item_values: np.ndarray, item_driver: np.ndarray, follow: float, pool: str,
            index: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Items (n,) after the item-level clicks that follow an earlier one, and ``followed`` (n,).

    ``user`` is grouped by user in time order. Each item-level click but a user's first follows,
    with probability ``follow``, one of the user's earlier item-level clicks drawn uniformly (its
    source), and its item is drawn uniformly from the ``pool`` of its source's driving value
    (module docstring). ``index`` is :func:`_value_index` of ``item_values``.
    """
    at = np.flatnonzero(kind == ITEM_LEVEL)  # (m,) rows of the item-level clicks
    owner = user[at]
    first = np.searchsorted(owner, owner)  # position in ``at`` of the user's first such click
    earlier = np.arange(len(at)) - first  # the user's item-level clicks before this one
    follows = (earlier > 0) & (rng.random(len(at)) < follow)
    pick = first + (rng.random(len(at)) * earlier).astype(np.int64)
    parent = np.where(follows, pick, np.arange(len(at)))
    position = rng.random(len(at))  # where in its pool a following click's item lies
    if pool == "driver":
        clicked = _same_driver_draws(item[at], parent, position, item_values, item_driver)
    else:
        clicked = _same_value_draws(item[at], parent, position, item_values, item_driver, index)
    item, followed = item.copy(), np.full(len(item), -1, dtype=np.int64)
    item[at] = clicked
    followed[at[follows]] = at[parent[follows]]
    return item, followed


def _same_driver_draws(fresh: np.ndarray, parent: np.ndarray, position: np.ndarray,
                       item_values: np.ndarray, item_driver: np.ndarray) -> np.ndarray:
    """Items (m,) of ``follow_pool="driver"``: roots (``parent`` is themselves) keep ``fresh``.

    Every click of a chain has the driving slot and value of its root (its first, fresh click),
    so each following click is drawn among the items with that driving slot and that value there.
    """
    fresh_item = fresh[_roots(parent)]
    slot = item_driver[fresh_item]
    stride = int(item_values.max()) + 1
    driven = np.flatnonzero(item_driver >= 0)
    keys = item_driver[driven] * stride + item_values[driven, item_driver[driven]]
    order = np.argsort(keys, kind="stable")
    members, keys = driven[order], keys[order]  # items grouped by driving (slot, value)
    key = slot * stride + item_values[fresh_item, slot]
    low, high = np.searchsorted(keys, key), np.searchsorted(keys, key, side="right")
    drawn = members[low + (position * (high - low)).astype(np.int64)]
    return np.where(parent != np.arange(len(parent)), drawn, fresh)


def _same_value_draws(fresh: np.ndarray, parent: np.ndarray, position: np.ndarray,
                      item_values: np.ndarray, item_driver: np.ndarray,
                      index: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Items (m,) of ``follow_pool="value"``: roots (``parent`` is themselves) keep ``fresh``.

    A following click is drawn among all items that carry its source's driving value in its
    source's driving slot. The drawn item's own driving slot may differ, and then the clicks that
    follow *it* repeat another slot's value, so an item depends on its source's drawn item: one
    vectorised step per depth of the chains (a handful), each for all clicks at that depth.
    """
    order, starts, counts = index
    clicked = fresh.copy()
    depth = _depths(parent)
    by_depth = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[by_depth], np.arange(1, depth.max(initial=0) + 1))
    for rows in np.split(by_depth, bounds)[1:]:  # depth 1, 2, ...: their sources are drawn
        source = clicked[parent[rows]]
        slot = item_driver[source]
        value = item_values[source, slot]
        offset = (position[rows] * counts[slot, value]).astype(np.int64)
        clicked[rows] = order[slot, starts[slot, value] + offset]
    return clicked


def _depths(parent: np.ndarray) -> np.ndarray:
    """Steps from every node to its root along ``parent`` (as :func:`_roots`; roots: 0), by
    pointer jumping: each jump adds the distance already covered by the node jumped to."""
    up = parent
    depth = (parent != np.arange(len(parent))).astype(np.int64)
    while not np.array_equal(up[up], up):
        depth = depth + depth[up]
        up = up[up]
    return depth


def _value_index(values: np.ndarray, vocab_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items grouped by (slot, value) of the non-id slots: order (k, items), start and count
    (k, vocab_max); row 0 (the item id, its own value) is left empty."""
    values = values.copy()
    values[:, 0] = 0
    order = np.argsort(values.T, axis=1, kind="stable")  # (k, items)
    counts = np.stack([np.bincount(column, minlength=vocab_max) for column in values.T])
    counts[0] = 0
    starts = np.cumsum(counts, axis=1) - counts
    return order, starts, counts


def _liked_values(rng: np.random.Generator, users: int, items: int, counts: np.ndarray,
                  liked: int, liked_items: int) -> np.ndarray:
    """(users, k, m) liked value codes, -1 padded; slot 0 holds ``liked_items`` item indices.

    Uniform sampling without replacement among the values some item carries (Gumbel top-m; an
    uncarried value has weight 0), so liked values are not merely the popular ones; a slot with
    fewer carried values than ``liked`` gives them all.
    """
    k, vocab_max = counts.shape
    m = max(liked, liked_items)
    with np.errstate(divide="ignore"):
        log_w = np.log((counts[1:] > 0).astype(float))  # (k - 1, vocab_max)
    keys = log_w[None] + rng.gumbel(size=(users, k - 1, vocab_max))
    top = np.argsort(-keys, axis=2)[:, :, :m]  # (users, k - 1, m)
    keep = (np.arange(m) < liked) & np.isfinite(np.take_along_axis(keys, top, axis=2))
    out = np.full((users, k, m), -1, dtype=np.int64)
    out[:, 1:] = np.where(keep, top, -1)
    draws = rng.random((users, items))
    out[:, 0, :liked_items] = np.argpartition(draws, liked_items - 1, axis=1)[:, :liked_items]
    return out


def _user_level_clicks(rng: np.random.Generator, user: np.ndarray, emphasis: np.ndarray,
                       liked: np.ndarray, index: tuple[np.ndarray, np.ndarray, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Slot drawn from the user's emphasis, then a liked value, then an item carrying it."""
    order, starts, counts = index
    cum = np.cumsum(emphasis[user], axis=1)  # (n, k)
    slot = np.minimum((rng.random((len(user), 1)) > cum).sum(axis=1), emphasis.shape[1] - 1)
    choices = liked[user, slot]  # (n, m)
    num_liked = (choices >= 0).sum(axis=1)
    value = choices[np.arange(len(user)), (rng.random(len(user)) * num_liked).astype(np.int64)]
    code = np.where(slot == 0, 0, value)  # slot 0: the liked value is the item itself
    offset = (rng.random(len(user)) * counts[slot, code]).astype(np.int64)
    item = np.where(slot == 0, value, order[slot, starts[slot, code] + offset])
    return item, slot


def generate(
    *,
    users: int = 6000,
    items: int = 1000,
    attributes: int = 5,
    clicks_per_user: float = 5.0,
    item_share: float = 0.95,
    skew: float = 0.3,
    liked: int = 2,
    liked_items: int = 3,
    salient: int = 2,
    salient_share: float = 0.3,
    item_driver: str = "category",
    follow: float = 0.9,
    follow_pool: str = "value",
    seed: int = 2022,
    return_truth: bool = False,
) -> RawData | tuple[RawData, Truth]:
    """Generate a data set whose every click has a known driving attribute (module docstring).

    Returns the :class:`RawData` (interactions with ``driver`` and ``driver_kind``), and with
    ``return_truth`` also the :class:`Truth` (the planted preferences, for tests and plots).
    Raises ValueError on impossible parameters.
    """
    _check(users, items, attributes, clicks_per_user, item_share, skew, liked, liked_items,
           salient, salient_share, item_driver, follow, follow_pool)
    rng = np.random.default_rng(seed)
    k = attributes
    vocab = np.resize(np.array(VOCAB_SIZES), k - 1)
    by_salience = item_driver == "salient"
    if by_salience:
        item_values, item_driver_slot = _make_items(rng, items, vocab, salient, salient_share)
        category_driver = np.full(vocab[0], -1, dtype=np.int64)
    else:
        item_values, item_driver_slot, category_driver = _make_items_by_category(rng, items, vocab)
    index = _value_index(item_values, int(vocab.max()))
    emphasis = rng.dirichlet(np.full(k, skew), size=users)  # (users, k)
    liked_codes = _liked_values(rng, users, items, index[2], liked, liked_items)

    per_user = MIN_CLICKS + rng.poisson(clicks_per_user - MIN_CLICKS, size=users)
    user = np.repeat(np.arange(users), per_user)  # (n,), grouped by user
    kind = np.where(rng.random(len(user)) < item_share, ITEM_LEVEL, USER_LEVEL)
    driven_items = np.flatnonzero(item_driver_slot >= 0)
    if len(driven_items) == 0:  # no salient item at all: every click is user-level
        kind[:] = USER_LEVEL
        driven_items = np.zeros(1, dtype=np.int64)
    item_click = driven_items[rng.integers(0, len(driven_items), size=len(user))]
    user_item, user_slot = _user_level_clicks(rng, user, emphasis, liked_codes, index)
    item = np.where(kind == ITEM_LEVEL, item_click, user_item)

    gaps = rng.integers(60, 3 * 86_400, size=len(user))
    start = START_TIME + rng.integers(0, 365 * 86_400, size=users)
    first = np.cumsum(per_user) - per_user
    time = start[user] + np.cumsum(gaps) - np.cumsum(gaps)[first][user]
    # drawn last, so that follow = 0 leaves every earlier draw as it was
    item, followed = _follow(rng, user, kind, item, item_values, item_driver_slot, follow,
                             follow_pool, index)
    driver = np.where(kind == ITEM_LEVEL, item_driver_slot[item], user_slot)

    names = attribute_names(k)
    user_names = _names("u", users)
    item_names = _names("i", items)
    value_names = [item_names] + [[f"{names[r]}_{v:02d}" for v in range(vocab[r - 1])]
                                  for r in range(1, k)]
    interactions = pl.DataFrame({
        "user": pl.Series(user_names).gather(user),
        "item": pl.Series(item_names).gather(item),
        "time": time.astype(np.int64),
        "driver": driver.astype(np.int8),
        "driver_kind": kind.astype(np.int8),
    })
    items_table = pl.DataFrame({"item": item_names} | {
        names[r]: pl.Series(value_names[r]).gather(item_values[:, r]) for r in range(1, k)
    })
    params = {"users": users, "items": items, "attributes": k, "clicks_per_user": clicks_per_user,
              "item_share": item_share, "skew": skew, "liked": liked, "liked_items": liked_items,
              "salient": salient, "salient_share": salient_share, "item_driver": item_driver,
              "follow": follow, "follow_pool": follow_pool, "seed": seed}
    origin = {"source": NAME, **params, "vocab_sizes": [items, *vocab.tolist()]}
    if by_salience:
        origin["salient_values"] = {names[r]: value_names[r][:salient] for r in range(1, k)}
        how = "a salient value"
    else:
        origin["category_drivers"] = {value_names[CATEGORY][c]: names[slot]
                                      for c, slot in enumerate(category_driver.tolist())}
        how = "the attribute the item's category names"
    share = float(np.mean(kind == ITEM_LEVEL))
    repeats = float(np.mean(followed[kind == ITEM_LEVEL] >= 0)) if share else 0.0
    notes = [f"synthetic: {len(user):,} clicks, {share:.0%} item-level (driven by {how}; "
             f"{repeats:.0%} of them repeat an earlier click's driving value), the rest user-level "
             f"(Dirichlet({skew}) emphasis); drivers in history_/target_driver"]
    raw = RawData(interactions, items_table, names, origin, notes)
    if not return_truth:
        return raw
    salient_codes = np.full((k, salient if by_salience else 0), -1, dtype=np.int64)
    salient_codes[1:] = np.arange(salient_codes.shape[1])
    truth = Truth(user, item, driver.astype(np.int8), kind.astype(np.int8), followed, item_values,
                  item_driver_slot, category_driver, salient_codes, emphasis, liked_codes,
                  user_names, item_names, value_names)
    return raw, truth


def _names(prefix: str, n: int) -> list[str]:
    """Zero-padded names, so that sorted order is numeric order: u0000 .. u2999."""
    width = len(str(n - 1))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = {name: p.default for name, p in inspect.signature(generate).parameters.items()}
    parser.add_argument("--users", type=positive_int, default=defaults["users"],
                        help="number of users")
    parser.add_argument("--items", type=positive_int, default=defaults["items"],
                        help="number of items")
    parser.add_argument("--attributes", type=int_at_least(2), default=defaults["attributes"],
                        metavar="K",
                        help="attributes k, the item id included")
    parser.add_argument("--clicks-per-user", type=float_at_least(MIN_CLICKS),
                        default=defaults["clicks_per_user"],
                        help=f"mean clicks per user ({MIN_CLICKS} + Poisson)")
    parser.add_argument("--item-share", type=fraction, default=defaults["item_share"],
                        help="probability that a click is item-level (its driver a property of "
                             "the item)")
    parser.add_argument("--skew", type=positive_finite_float, default=defaults["skew"],
                        help="Dirichlet concentration of each user's emphasis (small = skewed)")
    parser.add_argument("--liked", type=positive_int, default=defaults["liked"],
                        help="liked values per user and slot")
    parser.add_argument("--liked-items", type=positive_int, default=defaults["liked_items"],
                        help="liked items per user (the item id slot as a driver)")
    parser.add_argument("--item-driver", choices=ITEM_DRIVERS, default=defaults["item_driver"],
                        help="what sets an item's driving slot: its category (category c names "
                             "slot 1 + c mod (k-1)) or a salient value it carries")
    parser.add_argument("--follow", type=fraction, default=defaults["follow"],
                        help="probability that an item-level click repeats the driving value of "
                             "one of the user's earlier item-level clicks (0 = independent clicks)")
    parser.add_argument("--follow-pool", choices=FOLLOW_POOLS, default=defaults["follow_pool"],
                        help="the items such a click is drawn from: those carrying the earlier "
                             "click's driving value in its driving slot and driven by that slot "
                             "themselves (driver), or all items carrying that value there, "
                             "whatever slot drives them (value; same as driver with the salient "
                             "item driver)")
    parser.add_argument("--salient", type=positive_int, default=defaults["salient"],
                        help="salient values per non-id slot (salient item driver only)")
    parser.add_argument("--salient-share", type=fraction, default=defaults["salient_share"],
                        help="fraction of items carrying a salient value (salient item driver "
                             "only)")


def read(*, seed: int, report: BadInputReport | None = None, **options: object) -> RawData:
    """The ``camn prepare synthetic`` reader: :func:`generate` with ``seed`` and ``options``
    (its other keyword arguments), a bad value a DataError; nothing is bad input."""
    try:
        return generate(seed=seed, **options)
    except ValueError as error:
        raise DataError(f"synthetic: {error}") from None
