"""Checking a prepared store: the schema, the arrays' headers (the open check) and their
contents (the content scan), each problem named with the file it is in.

:class:`camn.data.store.PreparedStore` runs these; they live apart so that the store's layout
and its batches read on their own.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Protocol

import numpy as np

from camn.data import impressions, row_histories
from camn.data.protocols import FIRST_ITEM_ID, SPLITS
from camn.data.raw import DataError

ANNOTATIONS = ("driver", "driver_kind")  # planted truth per click (synthetic data)
SCHEMA_VERSION = 2
USERS = "users.txt"


SCHEMA_KEYS = (
    "schema_version", "attributes", "vocab_sizes", "max_len", "splits", "num_users",
    "num_items", "protocol", "seed", "timelines",
)
ARRAY_DTYPES = {
    "item_attributes": np.int32, "timeline_users": np.int32, "timeline_offsets": np.int64,
    "clicks": np.int32, "pair_users": np.int32, "pair_positions": np.int32,
    "pair_negatives": np.int32,
}
TIME_DTYPES = ("int32", "int64", "float64")
DRIVER_ARRAYS = tuple(f"click_{name}" for name in ANNOTATIONS)
CHUNK_BYTES = 1 << 25  # rows of about 32 MiB at a time: the scan's memory stays bounded


class PreparedStore(Protocol):
    """What the content scan reads of a :class:`camn.data.store.PreparedStore` (named by its
    members, so that this module need not import the store that imports it)."""

    schema: dict

    @property
    def attributes(self) -> list[str]: ...

    @property
    def vocab_sizes(self) -> list[int]: ...

    @property
    def num_samples(self) -> int: ...

    @property
    def has_drivers(self) -> bool: ...

    @property
    def split_bounds(self) -> np.ndarray: ...

    def array(self, name: str) -> np.ndarray: ...

    def vocab(self, attribute: str) -> list[str]: ...


def raise_problems(root: Path, what: str, problems: list[str]) -> None:
    """One DataError for a list of problems: the first named, the others counted."""
    if problems:
        more = len(problems) - 1
        tail = f" (and {more} more problem(s); camn stats {root} lists them)" if more else ""
        raise DataError(f"{root} {what}: {problems[0]}{tail}")


def read_schema(root: Path) -> dict:
    """``schema.json`` of the store at ``root``, parsed and checked for the keys camn reads."""
    path = root / "schema.json"
    if not path.is_file():
        raise DataError(f"{root} is not a prepared store (no schema.json): camn prepare")
    try:
        schema = json.loads(path.read_bytes())
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{root} is a damaged store: schema.json {json_problem(error)}") from None
    version = schema.get("schema_version") if isinstance(schema, dict) else None
    if _is_int(version, 1) and version < SCHEMA_VERSION:
        raise DataError(f"{root} was prepared by an earlier camn (store version {version}; this "
                        f"camn reads version {SCHEMA_VERSION}): prepare it again with "
                        f"{prepare_command(schema)}")
    problems = [f"schema.json {problem}" for problem in schema_problems(schema)]
    raise_problems(root, "is a damaged store", problems)
    return schema


def prepare_command(schema: dict) -> str:
    """How a store was prepared, from its schema: ``camn prepare <source>`` with the origin's
    inputs and options as ``schema.json`` records them, and its protocol, length and seed."""
    origin = schema.get("origin") if isinstance(schema.get("origin"), dict) else {}
    inputs = [f"{key}={value}" for key, value in sorted(origin.items())
              if key != "source" and isinstance(value, str | int | float)]
    options = [f"{key} {schema[key]}" for key in ("protocol", "max_len", "seed") if key in schema]
    return (f"camn prepare {origin.get('source', '<source>')} (origin in schema.json: "
            f"{', '.join(inputs) or 'none recorded'}; {', '.join(options)})")


def json_problem(error: ValueError) -> str:
    """Why a file did not parse as JSON, to read after its name, e.g. ``is not valid JSON
    (Expecting value: line 1, column 1)``."""
    if isinstance(error, json.JSONDecodeError):
        return f"is not valid JSON ({error.msg}: line {error.lineno}, column {error.colno})"
    return f"is not text ({error})"


def _is_int(value: object, minimum: int) -> bool:
    return type(value) is int and value >= minimum  # type(): JSON true is no count


def schema_problems(schema: object) -> list[str]:
    """What makes a parsed ``schema.json`` unusable (each reason reads after the file name)."""
    if not isinstance(schema, dict):
        return [f"holds a JSON {type(schema).__name__}, not an object"]
    rows = row_histories.is_row_store(schema)
    required = [key for key in SCHEMA_KEYS if not (rows and key == "timelines")]
    missing = [key for key in required if key not in schema]
    if missing:
        return [f"lacks {', '.join(missing)}"]
    problems = []
    if schema["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"has schema_version {schema['schema_version']!r}; this camn reads {SCHEMA_VERSION}"
        )
    attributes, sizes = schema["attributes"], schema["vocab_sizes"]
    if not (isinstance(attributes, list) and attributes
            and all(isinstance(a, str) and a for a in attributes)
            and len(set(attributes)) == len(attributes)):
        problems.append("attributes must be a non-empty list of distinct names")
    if not (isinstance(sizes, list) and all(_is_int(n, FIRST_ITEM_ID) for n in sizes)):
        problems.append(f"vocab_sizes must be a list of integers of at least {FIRST_ITEM_ID}")
    elif isinstance(attributes, list) and len(sizes) != len(attributes):
        problems.append(f"vocab_sizes has {len(sizes)} entries for {len(attributes)} attributes")
    for key in ("max_len", "num_users", "num_items"):
        if not _is_int(schema[key], 1):
            problems.append(f"{key} must be an integer of at least 1, got {schema[key]!r}")
    splits, pairs = schema["splits"], not impressions.is_impressions(schema)
    if not (isinstance(splits, dict) and sorted(splits) == sorted(SPLITS)
            and all(_is_int(n, 0) and (n % 2 == 0 or not pairs) for n in splits.values())):
        problems.append(f"splits must give the sample counts of {', '.join(SPLITS)}, even "
                        "numbers (a click and its non-click)")
    timelines = schema.get("timelines")
    if rows:
        problems += row_histories.schema_problems(schema)
    elif not (isinstance(timelines, dict) and _is_int(timelines.get("users"), 0)
              and _is_int(timelines.get("clicks"), 0)
              and timelines.get("time_dtype") in TIME_DTYPES):
        problems.append("timelines must give the users and clicks counts and a time_dtype of "
                        + " or ".join(TIME_DTYPES))
    if not problems and sizes[0] != schema["num_items"] + FIRST_ITEM_ID:
        problems.append(
            f"has vocab_sizes[0] {sizes[0]} (item ids) but num_items + 2 = "
            f"{schema['num_items'] + FIRST_ITEM_ID}"
        )
    return problems


def expected_arrays(schema: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array, as ``schema.json`` implies them (drivers included)."""
    if row_histories.is_row_store(schema):
        return row_histories.expected_arrays(schema)
    n, k, timelines = sum(schema["splits"].values()), len(schema["attributes"]), schema["timelines"]
    users, clicks = timelines["users"], timelines["clicks"]
    shapes = {
        "item_attributes": (schema["num_items"] + FIRST_ITEM_ID, k), "timeline_users": (users,),
        "timeline_offsets": (users + 1,), "clicks": (clicks,), "pair_users": (n // 2,),
        "pair_positions": (n // 2,), "pair_negatives": (n // 2,),
    }
    arrays = {name: (shape, np.dtype(ARRAY_DTYPES[name])) for name, shape in shapes.items()}
    if impressions.is_impressions(schema):
        arrays = {name: value for name, value in arrays.items() if not name.startswith("pair_")}
        arrays |= impressions.expected_arrays(schema)
    arrays["click_times"] = ((clicks,), np.dtype(timelines["time_dtype"]))
    for name in DRIVER_ARRAYS:
        arrays[name] = ((clicks,), np.dtype(np.int8))
    return arrays


def npy_problems(path: Path, label: str, shape: tuple[int, ...], dtype: np.dtype) -> list[str]:
    """Problems of one ``.npy`` file, from its header and size alone (no data is read)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            if version not in readers:
                return [f"{label} is a .npy file of version {version}, which camn never writes"]
            actual_shape, _, actual_dtype = readers[version](file)
            data_start = file.tell()
    except (ValueError, OSError) as error:
        return [f"{label} is not a readable .npy array ({error})"]
    if actual_dtype != dtype:
        return [f"{label} holds {actual_dtype} values; a store holds {dtype} there"]
    problems = []
    if actual_shape != shape:
        problems.append(f"{label} has shape {actual_shape}; schema.json implies {shape}")
    promised = data_start + int(np.prod(actual_shape)) * actual_dtype.itemsize
    size = path.stat().st_size
    if size != promised:
        state = "truncated" if size < promised else "longer than its header says"
        problems.append(
            f"{label} is {state}: its header promises {promised:,} bytes, the file has {size:,}"
        )
    return problems


def scan_contents(store: PreparedStore) -> list[str]:
    """One chunked pass over every array of a store whose layout is sound (class docstring)."""
    k, vocab_top = len(store.attributes), np.asarray(store.vocab_sizes) - 1
    top_user, top_item = store.schema["num_users"] - 1, store.schema["num_items"] + 1
    items = (FIRST_ITEM_ID, top_item, f"item ids are {FIRST_ITEM_ID}..num_items + 1 ({top_item})")
    users = (0, top_user, f"users are 0..num_users - 1 ({top_user})")
    rules: dict[str, tuple[int, int | np.ndarray, str]] = {  # name -> lowest, highest, rule
        "item_attributes": (0, vocab_top, ""),  # "": ids, checked per attribute slot
        "clicks": items, "pair_negatives": items, "timeline_users": users, "pair_users": users,
    }
    if store.labelled:
        del rules["pair_negatives"], rules["pair_users"]
        rules |= {"impression_items": items, "impression_users": users}
    if row_histories.is_row_store(store.schema):
        del rules["timeline_users"]
    if store.has_drivers:
        rules["click_driver"] = (-1, k - 1, f"drivers are -1 (none) or an attribute slot "
                                 f"0..{k - 1}")
        rules["click_driver_kind"] = (-1, 1, "driver kinds are -1 (none), 0 or 1")
    problems: list[str] = []
    padding = np.asarray(store.array("item_attributes")[0])
    if padding.any():
        problems.append(f"arrays/item_attributes.npy row 0 (the padding item) holds "
                        f"{padding.tolist()}; it must be all 0")
    damaged: set[str] = set()  # arrays with a value out of range
    for name, (lowest, highest, rule) in rules.items():
        found = first_outside(store.array(name), lowest, highest)
        if found is None:
            continue
        damaged.add(name)
        row, slot, value = found
        if rule:
            problems.append(f"arrays/{name}.npy holds {value} at row {row:,}; {rule}")
        else:
            problems.append(
                f"arrays/{name}.npy holds id {value} of attribute '{store.attributes[slot]}' at "
                f"item id {row:,}, outside its vocabulary of ids 0..{vocab_top[slot]:,} "
                "(vocab_sizes in schema.json)"
            )
    if row_histories.is_row_store(store.schema):
        rows = [] if damaged & {"impression_users"} else row_histories.content_problems(store)
        return problems + rows + vocab_problems(store)
    timeline = timeline_problems(store)
    if store.labelled and not timeline and not damaged & {"impression_users", "timeline_users"}:
        timeline = impressions.content_problems(store)
    elif not timeline and not damaged & {"pair_users", "timeline_users"}:
        timeline = reference_problems(store) or order_problems(store)
    return problems + timeline + vocab_problems(store)


def timeline_problems(store: PreparedStore) -> list[str]:
    """Timelines that cannot be read: offsets not ascending from 0 to the click count, users
    not strictly ascending."""
    offsets, clicks = np.asarray(store.array("timeline_offsets")), len(store.array("clicks"))
    problems = []
    if offsets[0] != 0 or offsets[-1] != clicks or np.any(np.diff(offsets) < 0):
        problems.append(f"arrays/timeline_offsets.npy does not ascend from 0 to the click count "
                        f"({clicks:,})")
    if np.any(np.diff(np.asarray(store.array("timeline_users"))) <= 0):
        problems.append("arrays/timeline_users.npy is not strictly ascending")
    return problems


def order_problems(store: PreparedStore) -> list[str]:
    """The first pair out of (user, position) order within its split: the pairs' order, or
    split counts in ``schema.json`` that cut a user's pairs."""
    bounds = store.split_bounds // 2
    rows = CHUNK_BYTES // 16
    for first, stop in pairwise(bounds):
        for start in range(first, stop, rows):
            end = min(stop, start + rows + 1)  # one pair of overlap with the next chunk
            keys = (store.array("pair_users")[start:end].astype(np.int64) << 32) + store.array(
                "pair_positions")[start:end]
            unordered = np.flatnonzero(np.diff(keys) <= 0)
            if len(unordered):
                return [f"arrays/pair_users.npy: the pairs are not sorted by (user, position) "
                        f"within each split at pair {start + unordered[0] + 1:,} (schema.json's "
                        "splits must bound them)"]
    users = store.array("pair_users")
    for bound in bounds[1:-1]:
        if 0 < bound < len(users) and users[bound - 1] == users[bound]:
            return [f"arrays/pair_users.npy: user {users[bound]}'s pairs lie in two splits (at "
                    f"pair {bound:,}; schema.json's splits must bound whole users)"]
    return []


def reference_problems(store: PreparedStore) -> list[str]:
    """The first pair whose user has no timeline, or whose position lies beyond it (a
    pair's position is the index of a click of the user's timeline)."""
    timeline_users = np.asarray(store.array("timeline_users"))
    counts = np.diff(store.array("timeline_offsets"))
    rows = CHUNK_BYTES // 16
    for start in range(0, store.num_samples // 2, rows):
        users = np.asarray(store.array("pair_users")[start : start + rows])
        positions = np.asarray(store.array("pair_positions")[start : start + rows])
        timeline = np.minimum(np.searchsorted(timeline_users, users), len(timeline_users) - 1)
        missing = timeline_users[timeline] != users
        beyond = ~missing & ((positions < 0) | (positions >= counts[timeline]))
        if missing.any():
            row = int(np.argmax(missing))
            return [f"arrays/pair_users.npy holds user {users[row]} at row {start + row:,}, who "
                    "has no timeline (arrays/timeline_users.npy)"]
        if beyond.any():
            row = int(np.argmax(beyond))
            return [f"arrays/pair_positions.npy holds {positions[row]} at row {start + row:,}, "
                    f"outside user {users[row]}'s timeline of {counts[timeline[row]]} clicks"]
    return []


def first_outside(
    array: np.ndarray, lowest: int, highest: int | np.ndarray
) -> tuple[int, int, int] | None:
    """The first value of ``array`` outside [lowest, highest] (bounds broadcast over the last
    axis, so per attribute slot for id arrays): (row, last-axis index, value), or None."""
    rows = max(1, CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, len(array), rows):
        chunk = np.asarray(array[start : start + rows])
        bad = (chunk < lowest) | (chunk > highest)
        if bad.any():
            where = tuple(np.argwhere(bad)[0])
            return start + int(where[0]), int(where[-1]), int(chunk[where])
    return None


def vocab_problems(store: PreparedStore) -> list[str]:
    """Vocabulary files that do not hold one line per id (``vocab_sizes`` in the schema)."""
    problems = []
    for attribute, size in zip(store.attributes, store.vocab_sizes, strict=True):
        label = f"vocab/{attribute}.txt"
        try:
            lines = len(store.vocab(attribute))
        except UnicodeDecodeError as error:
            problems.append(f"{label} is not UTF-8 text ({error})")
            continue
        if lines != size:
            problems.append(
                f"{label} has {lines:,} lines; vocab_sizes in schema.json says {size:,}"
            )
    return problems
