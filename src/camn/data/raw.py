"""What every source returns, and how bad input is reported.

A source (one file under ``camn/data/sources/``) reads a format into a :class:`RawData`:
string-keyed interactions and item attributes. :mod:`camn.data.prepare` encodes that into
integer vocabularies, applies a protocol and writes the prepared store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # training needs DataError but not polars
    import polars as pl

ACTION = re.compile(r"\s*\([^()]*\)$")  # the "(line skipped)" that ends a reason
UNKNOWN = None  # a missing attribute value is a null in RawData.items; it becomes id 1


class DataError(Exception):
    """Input that cannot be read; the message names the file and the line or column."""


@dataclass
class RawData:
    """A source's output, before any encoding.

    interactions: columns ``user`` and ``item`` (str, or integers where the file holds them:
        encoding numbers them in sorted order of their text either way), ``time`` (i64 or
        f64); optional planted-truth columns ``driver`` (i8, the attribute slot that drove the
        click) and ``driver_kind`` (i8, 0 = item-level salience, 1 = user-level emphasis).
    items: column ``item`` (str), then one str column per attribute after the item id, named as
        in ``attributes[1:]``; nulls mean "unknown". Interactions on an item missing here get
        "unknown" for every attribute but the id.
    attributes: attribute names, the item id first.
    origin: where the data came from (source name, files, options), stored in the schema.
    notes: what the reader did that the user should know (printed by ``camn prepare``, kept in
        the schema).
    warnings: attribute name -> what the reader found wrong with that column (a list keeping
        only its first token, say); ``camn prepare`` prints them with its own checks
        (:mod:`camn.data.quality`) and keeps them in the schema's ``attribute_warnings``.
    users: the user table of labelled impressions, or None: column ``user`` (str), then one str
        column per user feature (age, gender ...), one row a user; nulls mean "unknown", and so
        does every feature of a user without a row.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    attributes: list[str]
    origin: dict
    notes: list[str] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    users: pl.DataFrame | None = None


class BadInputReport:
    """Collects bad input: stops at the first case when strict, otherwise counts them.

    Nothing is dropped silently: every case (a skipped line, a duplicate, an item without
    metadata) is counted under its reason, and the first few are kept verbatim (file and line)
    for the summary printed at the end of ``camn prepare``. Reasons end with what was done, in
    parentheses, e.g. "broken JSON (line skipped)" or "item has no metadata (attributes set to
    unknown)"; when strict nothing is done, so the error says only what is wrong.
    """

    max_examples = 5

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.examples: list[str] = []

    def bad(self, path: str | Path, line: int | None, reason: str, count: int = 1) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        message = f"{where}: {reason}"
        if self.strict:
            raise DataError(f"{where}: {ACTION.sub('', reason)}")
        self.counts[reason] = self.counts.get(reason, 0) + count
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no bad input"
        lines = [f"bad input: {self.total:,} case(s) (use --strict to stop at the first):"]
        lines += [f"  {n:,} x {reason}" for reason, n in sorted(self.counts.items())]
        lines += ["  e.g. " + example for example in self.examples]
        return "\n".join(lines)
