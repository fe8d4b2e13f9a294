"""A fingerprint of each vocabulary of a store: which value each id stands for.

Two stores with the same attributes and vocabulary sizes may still give their ids to other
values (prepared from other data, or from another version of it); a model trained on one reads
the other's ids without any error and scores noise. The vocabularies are those of the item
attributes (``vocab/<attribute>.txt``) and, in a store of labelled impressions with side
features, of the context and user features (``vocab/context.<name>.txt``,
``vocab/user.<name>.txt``, fingerprinted under ``context.<name>`` and ``user.<name>``).

The trainer records the fingerprints of its store in each seed's ``config.json``
(``vocabularies``), and every command that applies a run to a store compares them
(:func:`check_vocabularies`). Runs trained before camn recorded them are accepted as they are,
and so are runs that recorded only the item attributes' (before the side features' were
recorded): a vocabulary a run did not record is not compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from camn.data.raw import DataError

KEY = "vocabularies"  # where a seed's config.json keeps them


class HasVocabularies(Protocol):
    """What a fingerprint reads of a store (:class:`camn.data.store.PreparedStore`)."""

    root: Path
    schema: dict

    @property
    def attributes(self) -> list[str]: ...

    def vocab(self, attribute: str) -> list[str]: ...


def fingerprint(values: Sequence[str]) -> str:
    """``sha256:`` and the SHA-256 of the values in id order, one a line (a vocabulary value
    never holds a line break), after their count."""
    digest = hashlib.sha256(f"{len(values)}\n".encode())
    digest.update("\n".join(values).encode("utf-8"))
    return f"sha256:{digest.hexdigest()}"


def vocabulary_names(store: HasVocabularies) -> list[str]:
    """The store's vocabularies, as ``vocab/<name>.txt`` names them: the attributes in order,
    then ``context.<name>`` of each context feature and ``user.<name>`` of each user feature."""
    schema = store.schema
    return [*store.attributes, *(f"context.{name}" for name in schema.get("context_features", [])),
            *(f"user.{name}" for name in schema.get("user_features", []))]


def store_fingerprints(store: HasVocabularies) -> dict[str, str]:
    """Each vocabulary's fingerprint (:func:`vocabulary_names`, in that order)."""
    return {name: fingerprint(store.vocab(name)) for name in vocabulary_names(store)}


def check_vocabularies(config: dict, store: HasVocabularies) -> None:
    """Refuse (DataError naming both stores) a store whose vocabularies are not those the run
    recorded in ``config`` (a seed's ``config.json``); a config without them passes."""
    recorded = config.get(KEY)
    if not isinstance(recorded, dict):
        return
    found = store_fingerprints(store)
    differ = [name for name, value in found.items() if recorded.get(name, value) != value]
    if differ:
        trained = config.get("data", "the store it was trained on")
        read_as = "items" if set(differ) <= set(store.attributes) else "values"
        raise DataError(
            f"{store.root} is not the store the run was trained on ({trained}): its "
            f"vocabulary of {', '.join(differ)} gives the ids to other values, so the model "
            f"would read them as other {read_as}; pass --data {trained}, or a store prepared "
            "from the same data"
        )
