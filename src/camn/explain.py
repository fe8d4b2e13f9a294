"""``camn explain``: which attribute drove each history click, in the model's view (Figure 1).

For clicked samples of the store (label 1, with a history) the routing scores P (CAMN's
Eq. 2) of every history item are shown with the item's id and full attribute values, under the
user's own id (``users.txt`` of the store). ``--user ID`` picks that user's clicks (the most recent
``--limit``, of whatever split the user is in), otherwise the first ``--limit`` clicks of
``--split``. A run trained with side features is scored with each sample's own (its user's,
its row's context and numbers, from the store); the routing is over the item attributes only,
and a multi-valued attribute shows the item's whole bag (``Drama|Comedy``).
Formats:

- ``text``: one table a sample; ``*`` marks each item's top attribute, and on synthetic stores
  a ``planted`` column names the attribute that really drove the click; then the attention
  health of the model's interest heads over the split's (or the user's) clicks, at most
  8,192: per head the entropy relative to uniform and the mean |logit|, and L_d (Eq. 7), so
  that a reader sees whether the heads single anything out before trusting the scores;
- ``csv``: one line per (sample, history item, attribute): ``sample``, ``store_row``,
  ``split``, ``user``, ``candidate``, ``probability``, ``position`` (1 = oldest), ``item``,
  ``attribute``, ``value``, ``score`` (P), ``top`` (the item's top attribute), and ``planted``
  (this attribute drove the click; synthetic stores only);
- ``json``: a list of samples, each with its candidate's values and a ``history`` list of items
  (``values``, ``scores``, ``top``, ``planted``).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import polars as pl

from camn.argtypes import positive_int
from camn.cli import add_run_arguments
from camn.data.protocols import SPLITS
from camn.data.raw import DataError
from camn.data.store import USERS
from camn.encoded_rows import Encoded
from camn.encoding import attribute_values, routing_rows
from camn.predict import Predictor, load

FORMATS = ("text", "csv", "json")
HEALTH_ROWS = 8192  # clicks the text format's attention health is averaged over, at most
CAVEAT = (
    "Caveat: Eq. 2-4 tie column r to attribute r only through 'P[:, r] scales head r'; on "
    "planted data the router sorts items by their driving attribute but often under another "
    "column (docs/results.md)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="split whose clicks are shown (without --user)")
    parser.add_argument("--user", help="show this user's clicks (a user id of your data)")
    parser.add_argument("--limit", type=positive_int, default=5,
                        help="number of clicked samples to show")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="text tables, or CSV / JSON for other tools")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    predictor = load(args.run, args.seed, store=args.data, device=args.device)
    if not predictor.has_routing:
        raise DataError(predictor.no_routing())
    rows = chosen_rows(predictor, args.user, args.split, args.limit)
    samples = explain_rows(predictor, rows)
    if args.format == "csv":
        sys.stdout.write(samples.drop("candidate_values").write_csv())
    elif args.format == "json":
        print(json.dumps(as_json(samples), indent=2, ensure_ascii=False))
    else:
        print(f"{predictor.name} (seed {predictor.seed}): routing scores P of every history "
              "click (Eq. 2); * marks the attribute that drove the click in the model's view.\n"
              + CAVEAT)
        for _, sample in samples.group_by("sample", maintain_order=True):
            print()
            print(describe(sample, predictor.attributes))
        where = f"user {args.user!r}" if args.user else f"the {args.split} split"
        if not len(rows):
            print(f"no clicked sample with a history for {where}")
        clicks = chosen_rows(predictor, args.user, args.split, HEALTH_ROWS)
        if len(clicks):
            print()
            print(describe_health(predictor.health(encoded(predictor, clicks)), len(clicks),
                                  where))
    return 0


def describe_health(health: dict, count: int, where: str) -> str:
    """The attention health lines of the text format: per head entropy and |logit|, L_d."""
    if "attention_entropy" not in health:
        return "attention health: the model reports none (no self-attention heads)"
    def cells(values: list[float]) -> str:
        return "  ".join(f"{value:.3f}" for value in values)
    lines = [f"attention health of the {len(health['attention_entropy'])} interest heads over "
             f"{count:,} click{'s' * (count != 1)} of {where} (head r is scaled by routing "
             "column r):",
             f"  entropy / uniform  {cells(health['attention_entropy'])}   "
             "(1 = uniform over the keys a click may see, 0 = one key)",
             f"  mean |logit|       {cells(health['attention_abs_logit'])}"]
    if "diversity" in health:
        lines.append(f"  diversity L_d      {health['diversity']:.4f}   (Eq. 7)")
    return "\n".join(lines)


def chosen_rows(predictor: Predictor, user: str | None, split: str, limit: int) -> np.ndarray:
    """Store rows to explain: clicks (label 1) with a history; ``user``'s latest ``limit``
    ones (in time order), else the first ``limit`` of ``split``."""
    store = predictor.store
    if user is None:
        rows = store.split_indices(split)
    else:
        users = predictor.user_ids()
        try:
            index = users.index(user)
        except ValueError:
            raise DataError(f"user {user!r} is not in the store {store.root} "
                            f"({USERS}; e.g. {users[0]!r})") from None
        rows = np.flatnonzero(store.gather("users", slice(None)) == index)
    clicks = (store.gather("labels", rows) == 1) & (store.gather("lengths", rows) > 0)
    rows = rows[clicks]
    return rows[-limit:] if user is not None else rows[:limit]


def encoded(predictor: Predictor, rows: np.ndarray) -> Encoded:
    """Store ``rows`` as the predictor's encoded input (item rows of history and candidate,
    and the rows' side features where the store has them)."""
    store = predictor.store
    history = store.gather("histories", rows)[:, :, 0].astype(np.int64)  # (n, L)
    lengths = store.gather("lengths", rows).astype(np.int64)
    return Encoded(history, lengths, store.gather("targets", rows)[:, 0].astype(np.int64),
                   side=store.side_fields(rows))


def explain_rows(predictor: Predictor, rows: np.ndarray) -> pl.DataFrame:
    """The long table of the module docstring (plus ``candidate_values``, the candidate's
    attribute values, for the text and JSON formats) for store ``rows``."""
    store, attributes = predictor.store, predictor.attributes
    vocabularies = [predictor.vocabulary(a) for a in attributes]
    history = store.gather("histories", rows).astype(np.int64)  # (n, L, k)
    lengths = store.gather("lengths", rows).astype(np.int64)
    targets = store.gather("targets", rows).astype(np.int64)  # (n, k)
    probabilities, routing = predictor.run(encoded(predictor, rows), routing=True)
    bags = predictor.ids.bag_values()
    table = routing_rows(history, lengths, routing, attributes, vocabularies, bags=bags)
    users = store.gather("users", rows)
    names = predictor.user_ids()
    user = [names[u] for u in users]
    splits = np.asarray(SPLITS, dtype=object)[store.gather("splits", rows)]
    per_sample = pl.DataFrame({
        "sample": np.arange(len(rows)),
        "store_row": rows.astype(np.int64),
        "split": splits.tolist(),
        "user": user,
        "candidate": [vocabularies[0][i] for i in targets[:, 0]],
        "probability": probabilities,
        "candidate_values": attribute_values(targets, vocabularies, bags).tolist(),
    }, schema_overrides={"candidate_values": pl.List(pl.String), "user": pl.String,
                         "split": pl.String, "candidate": pl.String})
    if store.has_drivers:
        drivers = store.gather("history_driver", rows)  # (n, L) slot or -1
        planted = drivers[table["sample"].to_numpy(), table["position"].to_numpy() - 1]
        slot = np.tile(np.arange(len(attributes)), len(table) // max(1, len(attributes)))
        table = table.with_columns(pl.Series("planted", planted == slot))
    return per_sample.join(table, on="sample", how="inner", maintain_order="left")


def describe(sample: pl.DataFrame, attributes: list[str]) -> str:
    """One sample as the paper's Figure 1: every history click with its attribute values and
    their routing scores, the top attribute marked with * (and the planted driver where
    known)."""
    first = sample.row(0, named=True)
    target = ", ".join(f"{name}={value}"
                       for name, value in zip(attributes, first["candidate_values"], strict=True))
    header = ["click", *attributes, "top"]
    planted = "planted" in sample.columns
    if planted:
        header.append("planted")
    table = []
    for (position,), item in sample.group_by("position", maintain_order=True):
        cells = [f"{value} {score:.2f}" + "*" * top
                 for value, score, top in item.select("value", "score", "top").iter_rows()]
        top_name = item.filter(pl.col("top"))["attribute"][0]
        row = [str(position), *cells, top_name]
        if planted:
            driven = item.filter(pl.col("planted"))["attribute"]
            row.append(driven[0] if len(driven) else "-")
        table.append(row)
    widths = [max(len(cells[c]) for cells in [header, *table]) for c in range(len(header))]
    lines = [f"store row {first['store_row']} ({first['split']}), user {first['user']}: "
             f"clicked {target} (predicted p = {first['probability']:.3f})"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
              for cells in [header, *table]]
    return "\n".join(lines)


def as_json(samples: pl.DataFrame) -> list[dict]:
    """The JSON format: one object a sample (module docstring)."""
    out = []
    for _, sample in samples.group_by("sample", maintain_order=True):
        first = sample.row(0, named=True)
        attributes = sample.filter(pl.col("position") == first["position"])["attribute"]
        history = []
        for (position,), item in sample.group_by("position", maintain_order=True):
            entry = {
                "position": position,
                "item": item["item"][0],
                "values": dict(zip(item["attribute"], item["value"], strict=True)),
                "scores": dict(zip(item["attribute"], item["score"], strict=True)),
                "top": item.filter(pl.col("top"))["attribute"][0],
            }
            if "planted" in item.columns:
                driven = item.filter(pl.col("planted"))["attribute"]
                entry["planted"] = driven[0] if len(driven) else None
            history.append(entry)
        out.append({
            "store_row": first["store_row"], "split": first["split"], "user": first["user"],
            "candidate": dict(zip(attributes, first["candidate_values"], strict=True)),
            "probability": first["probability"], "history": history,
        })
    return out
