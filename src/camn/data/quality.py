"""What ``camn prepare`` warns of, without refusing the data: attribute columns that carry little
or mislead, and a ``--max-len`` far above the longest history.

The attribute checks look at the items of the store (those of the interactions), one column at
a time, with polars:

- **no value**: no item has one, so every item gets the unknown id and the slot carries nothing
  (a misspelt column, say);
- **one value**: every item that has a value has the same one: the slot carries nothing, or
  only whether the value is known;
- **mostly blank**: more than ``MOSTLY_BLANK`` of the items have no value; they all share the
  unknown id, so the slot mostly says "unknown";
- **numbers**: every value is a number, with at least ``NUMERIC_DISTINCT`` distinct ones, some
  written with a fraction or an exponent (``12.99``): each number becomes a category of its own,
  so close numbers share nothing and a number unseen in training is unknown; ``--bucketize``
  puts such a column into deciles. Whole numbers alone are not flagged: integer codes
  (category ids) are a common way to write categories.

A source adds its own findings on a column (:attr:`RawData.warnings`). Every finding is printed
as ``camn: warning: attribute 'NAME': ...`` and kept in the schema's ``attribute_warnings``
(attribute name -> messages), which ``camn stats`` lists.
"""

from __future__ import annotations

import sys

import polars as pl

from camn.data.raw import RawData

MOSTLY_BLANK = 0.5  # share of the items without a value above which a column is mostly blank
NUMERIC_DISTINCT = 20  # distinct numbers from which a column of numbers is worth bucketing
SHOWN_VALUES = 3  # values named in a message
PADDING_WARN_BYTES = 64 * 2**20  # --max-len padding gathered per epoch worth a warning
ID_BYTES = 4  # an attribute id in a history (int32)


def attribute_warnings(raw: RawData, items: pl.Series) -> dict[str, list[str]]:
    """attribute name -> what is wrong with its column over ``items`` (the store's item
    strings), in slot order, the source's own findings first; attributes without a finding are
    left out."""
    table = pl.DataFrame({"item": items}).join(
        raw.items.unique(subset="item", keep="first", maintain_order=True),
        on="item", how="left", maintain_order="left",
    )
    warnings = {}
    for name in raw.attributes[1:]:
        found = raw.warnings.get(name, []) + column_warnings(table[name].cast(pl.String))
        if found:
            warnings[name] = found
    return warnings


def column_warnings(column: pl.Series) -> list[str]:
    """The findings on one attribute column (one value an item, null = no value)."""
    total = len(column)
    known = column.drop_nulls()
    blank = total - len(known)
    values = known.unique().sort()
    if len(values) == 0:
        return [f"no item has a value: all {total:,} items get the unknown id, so the attribute"
                " carries nothing (check the column's name, or leave it out)"]
    if len(values) == 1:
        rest = f", {blank:,} without a value" if blank else ""
        return [f"one value, {values[0]!r}, for every item that has one ({len(known):,} of the"
                f" {total:,} items{rest}): the attribute carries nothing"
                + (" but whether the value is known" if blank else "")]
    found = []
    if blank > MOSTLY_BLANK * total:
        found.append(
            f"mostly blank: {blank:,} of the {total:,} items ({blank / total:.0%}) have no value"
            " and share the unknown id"
        )
    numbers = values.str.strip_chars().cast(pl.Float64, strict=False)
    fractions = values.str.contains(r"[.eE]")
    if numbers.null_count() == 0 and len(values) >= NUMERIC_DISTINCT and fractions.any():
        shown = ", ".join(repr(v) for v in values.head(SHOWN_VALUES))
        found.append(
            f"numbers ({len(values):,} distinct, e.g. {shown}): each number is a category of"
            " its own, so close numbers share nothing and a number unseen in training is"
            f" unknown; pass --bucketize {column.name} to put them into 10 quantile buckets"
        )
    return found


def history_warning(most_events: int, samples: int, attributes: int, max_len: int) -> str | None:
    """The warning for a ``max_len`` far above the longest history, or None.

    ``most_events``: the most active user's interactions; the longest history is one less (its
    last click's history). Far above: more than twice
    the longest, with the padding of the ``samples`` histories ((samples, max_len, attributes)
    ids, gathered into batches each epoch) past the longest at least ``PADDING_WARN_BYTES``.
    """
    longest = most_events - 1
    size = samples * max_len * attributes * ID_BYTES
    needed = samples * longest * attributes * ID_BYTES
    if max_len <= 2 * longest or size - needed < PADDING_WARN_BYTES:
        return None
    return (
        f"--max-len {max_len:,} is far above the longest history, {longest:,} items (the most"
        f" active user has {longest + 1:,} interactions): batches pad every history to"
        f" {max_len:,} positions, so one pass over the {samples:,} samples gathers"
        f" {size_text(size)} of history ids ({samples:,} x {max_len:,} x {attributes}) where"
        f" --max-len {longest:,} would gather {size_text(needed)}; pass --max-len {longest:,}"
        " or less"
    )


def size_text(size: int) -> str:
    """A byte count for a message: ``3.7 GiB``, ``512 KiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:,} bytes"


def warn(raw: RawData, items: pl.Series, most_events: int, samples: int, max_len: int
         ) -> dict[str, list[str]]:
    """Print every finding on stderr (``camn: warning: ...``); return the attribute ones,
    which the schema keeps as ``attribute_warnings``."""
    found = attribute_warnings(raw, items)
    for name, messages in found.items():
        for message in messages:
            print(f"camn: warning: attribute {name!r}: {message}", file=sys.stderr)
    if message := history_warning(most_events, samples, len(raw.attributes), max_len):
        print(f"camn: warning: {message}", file=sys.stderr)
    return found


def stats_lines(schema: dict) -> list[str]:
    """``camn stats``'s lines on the schema's ``attribute_warnings``: each finding with its
    slot (the item id is slot 0); ``attribute warnings: none`` without any (and for a store
    prepared before camn kept them)."""
    found = schema.get("attribute_warnings")
    attributes = schema.get("attributes") or []
    if not isinstance(found, dict):
        found = {}
    lines = [f"  slot {slot} {name}: {message}"
             for slot, name in enumerate(attributes) for message in found.get(name, [])]
    return [f"attribute warnings: {len(lines):,}" if lines else "attribute warnings: none",
            *lines]
