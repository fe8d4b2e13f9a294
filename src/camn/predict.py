"""A trained run put to use from Python: ``camn.load(run)`` gives a :class:`Predictor`.

The predictor takes ids as the user's own data names them and maps them through the
vocabularies of the store the run was trained on (:mod:`camn.encoding`: item ids to their
attribute ids, user ids to their latest history in the store; unknown ids are counted, never
dropped: :attr:`Predictor.unknown` holds the counts of the last call, and a
:class:`~camn.encoded_rows.UnknownIdsWarning` names them). A run trained with side features also
takes each row's context and numeric values (``features=``, or frame columns, named as at
prepare time) and reads the user features of the row's user id from the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from camn.data.fingerprint import check_vocabularies
from camn.data.raw import ACTION, DataError
from camn.data.shards import MANIFEST, open_store
from camn.data.store import PreparedStore
from camn.encoded_rows import UNKNOWN_ID, Encoded, UnknownIds, as_ids, as_series
from camn.encoding import IdEncoder, frame_columns, is_frame, routing_rows
from camn.models.base import CTRModel, FeatureSpec
from camn.run_folder import CONFIG, RUN_RESULTS, RunFolder, SeedFolder
from camn.train.checkpoints import DAMAGED, load_model, read_results, seed_folder
from camn.train.distributed import resolve_device
from camn.train.metrics import TermAverages


class Predictor:
    """A trained model with the vocabularies of its store: raw ids in, click probabilities out.

    Made by :func:`load`. ``score`` and ``explain`` take a history of item ids per row plus a
    candidate item id per row (``histories=``, ``candidates=``), or a user id per row
    (``users=``) whose latest history comes from the store (module docstring), or a polars or
    pandas frame with such columns. A run with side features also takes, per row, the values
    of :attr:`feature_columns` (``features=``: a mapping or frame of columns; or columns of
    the frame) and, for user features, the user id (``users=``, beside ``histories=`` too).
    Attributes: ``model``, ``config``, ``store``, ``name`` (registry name), ``seed``,
    ``attributes``, ``max_len``, ``ids`` (the store's :class:`~camn.encoding.IdEncoder`),
    ``unknown`` (the last call's :class:`UnknownIds`).
    """

    def __init__(
        self,
        model: CTRModel,
        config: dict,
        store: PreparedStore,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
    ) -> None:
        self.model, self.config, self.store = model.eval(), config, store
        self.device = torch.device(device)
        self.name: str = config["model"]
        self.seed: int | None = config.get("seed")
        self.attributes: list[str] = store.attributes
        self.max_len: int = store.max_len
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        self.batch_size = int(batch_size or train.get("eval_batch_size") or 8192)
        self.unknown = UnknownIds()
        self.ids = IdEncoder(store)
        self._routing: bool | None = None

    def __repr__(self) -> str:
        return (f"Predictor({self.name}, seed {self.seed}, store {self.store.root}, "
                f"attributes {self.attributes}, max_len {self.max_len})")

    def vocabulary(self, attribute: str) -> list[str]:
        """The values of one attribute; value i has id i (0 padding, 1 unknown)."""
        return self.ids.vocabulary(attribute)

    def user_ids(self) -> list[str]:
        """The store's user ids: user index i is element i."""
        return self.ids.user_ids()

    @property
    def feature_columns(self) -> list[str]:
        """The context and numeric features each row gives, named as at prepare time (empty
        for a run without them)."""
        return self.ids.feature_columns

    def add_items(self, frame: Any, item_col: str | None = None) -> UnknownIds:
        """Attributes of items, used instead of the store's: see :meth:`IdEncoder.add_items`."""
        return self.ids.add_items(frame, item_col)

    # --------------------------------------------------------------------------- the model

    def batch(self, rows: Encoded, start: int = 0, stop: int | None = None) -> dict:
        """The model's batch of rows[start:stop] (history, mask, target and the side
        features) on the device."""
        history, lengths = rows.history[start:stop], rows.lengths[start:stop]
        mask = np.arange(self.max_len)[None, :] < lengths[:, None]

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

        table = self.ids.table
        return {"history": tensor(table[history]), "mask": tensor(mask),
                "target": tensor(table[rows.candidate[start:stop]]),
                **{key: tensor(values[start:stop]) for key, values in rows.side.items()}}

    @torch.no_grad()
    def run(self, rows: Encoded, routing: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Click probabilities (n,) float64, and with ``routing`` P (n, L, k) float32, in
        batches of ``batch_size``."""
        logits, scores = [np.zeros(0)], [np.zeros((0, self.max_len, len(self.attributes)),
                                                 np.float32)]
        for start in range(0, len(rows), self.batch_size):
            output = self.model(self.batch(rows, start, start + self.batch_size))
            logits.append(output.logits.double().cpu().numpy())
            if routing:
                if output.routing is None:
                    raise DataError(self.no_routing())
                scores.append(output.routing.float().cpu().numpy())
        probabilities = 1 / (1 + np.exp(-np.concatenate(logits)))
        return probabilities, np.concatenate(scores) if routing else None

    @torch.no_grad()
    def health(self, rows: Encoded) -> dict[str, float | list[float]]:
        """The model's attention health over ``rows`` (``CTRModel.evaluate``: per head
        ``attention_entropy`` and ``attention_abs_logit``, and ``diversity``), averaged over
        the rows; empty for a model without attention heads."""
        terms = TermAverages()
        for start in range(0, len(rows), self.batch_size):
            batch = self.batch(rows, start, start + self.batch_size)
            terms.add(self.model.evaluate(batch).aux_terms, len(batch["target"]))
        return terms.averages()

    @property
    def has_routing(self) -> bool:
        """Whether the model returns routing scores P (CAMN with its routing module)."""
        if self._routing is None:
            history = np.zeros((1, self.max_len), np.int64)
            history[0, 0] = UNKNOWN_ID
            one = Encoded(history, np.ones(1, np.int64), np.full(1, UNKNOWN_ID, np.int64),
                          side=self.ids.unknown_side(1))
            with torch.no_grad():
                self._routing = self.model(self.batch(one)).routing is not None
        return self._routing

    def no_routing(self) -> str:
        return (f"model {self.name} returns no routing scores, so there is nothing to explain; "
                "only models with a routing module (camn and its variants but camn-loss) do")

    # ---------------------------------------------------------------------- the public calls

    def score(
        self,
        histories: Any = None,
        candidates: Any = None,
        *,
        users: Any = None,
        features: Any = None,
        history_col: str = "history",
        candidate_col: str = "candidate",
        user_col: str = "user",
        separator: str | None = None,
    ) -> Any:
        """Click probabilities of candidates.

        ``score(histories, candidates)``: per row a history (a list of item ids, oldest
        first, or one string of ids joined by ``separator``, default white space) and a
        candidate item id; ``score(candidates=..., users=...)``: per row a user id whose latest
        history the store holds. One history or user with many candidates is repeated for
        each. Returns a numpy float64 array (n,).

        A run with side features also needs ``features``: a mapping (or frame) of a column of
        values per name of :attr:`feature_columns`, one value per row (or one for all); with
        user features, ``users`` gives the rows' user ids (beside ``histories`` too).

        ``score(frame)``: a polars or pandas DataFrame with a ``candidate_col`` column and a
        ``history_col`` (list or text) or, lacking it, a ``user_col`` column (and the side
        features' columns: :attr:`feature_columns`, and ``user_col`` for user features);
        returns the frame (same kind) with a ``score`` column added.

        Raises DataError naming the first bad row (a missing candidate, a history that does
        not parse, a numeric feature that is not a number) or the missing feature columns;
        unknown ids and context values are scored as unknown and counted in :attr:`unknown`.
        """
        if is_frame(histories):
            return self.score_frame(histories, history_col=history_col,
                                    candidate_col=candidate_col, user_col=user_col,
                                    separator=separator)
        rows = self._encode_arguments(histories, candidates, users, separator, features)
        return self.run(rows)[0]

    def score_frame(
        self,
        frame: Any,
        *,
        history_col: str = "history",
        candidate_col: str = "candidate",
        user_col: str = "user",
        separator: str | None = None,
    ) -> Any:
        """``frame`` (polars or pandas) with a ``score`` column added; see :meth:`score`."""
        histories, candidates, users = self._frame_columns(frame, history_col, candidate_col,
                                                           user_col)
        rows = self._encode_arguments(histories, candidates, users, separator, frame)
        scores = self.run(rows)[0]
        if isinstance(frame, pl.DataFrame):
            return frame.with_columns(pl.Series("score", scores))
        return frame.assign(score=scores)

    def explain(
        self,
        histories: Any = None,
        candidates: Any = None,
        *,
        users: Any = None,
        features: Any = None,
        history_col: str = "history",
        candidate_col: str = "candidate",
        user_col: str = "user",
        separator: str | None = None,
    ) -> pl.DataFrame:
        """The routing scores P (CAMN's Eq. 2) of every history item, one row per (input row,
        history item, attribute): ``row`` (0-based input row), ``candidate``, ``probability``,
        ``position`` (1 = the oldest item kept), ``item`` (its id), ``attribute``, ``value``
        (the item's value of that attribute), ``score`` (P), ``top`` (True at the item's
        highest-scored attribute). Inputs as for :meth:`score`. A DataError for a model
        without routing scores."""
        if not self.has_routing:
            raise DataError(self.no_routing())
        if is_frame(histories):
            features = histories
            histories, candidates, users = self._frame_columns(
                histories, history_col, candidate_col, user_col)
        rows = self._encode_arguments(histories, candidates, users, separator, features)
        probabilities, routing = self.run(rows, routing=True)
        table = routing_rows(self.ids.table[rows.history], rows.lengths, routing,
                             self.attributes, [self.vocabulary(a) for a in self.attributes],
                             rows.names, self.ids.bag_values())
        sample = table["sample"]
        return table.select(
            pl.col("sample").alias("row"),
            as_ids(as_series("candidate", candidates)).gather(sample),
            pl.Series("probability", probabilities).gather(sample),
            pl.exclude("sample"),
        )

    def _frame_columns(self, frame: Any, history_col: str, candidate_col: str,
                       user_col: str) -> tuple[Any, Any, Any]:
        """:func:`frame_columns`, and for a run with user features the user column beside a
        history column."""
        histories, candidates, users = frame_columns(frame, history_col, candidate_col, user_col)
        if self.ids.user_features and users is None and user_col in frame.columns:
            users = frame[user_col]
        return histories, candidates, users

    def _encode_arguments(self, histories: Any, candidates: Any, users: Any,
                          separator: str | None, features: Any = None) -> Encoded:
        """Sequences -> encoded rows; bad rows are one DataError, unknown ids a warning."""
        if candidates is None:
            raise DataError("give the candidates: one item id per row")
        both = histories is not None and users is not None
        if (histories is None and users is None) or (both and not self.ids.user_features):
            raise DataError("give either histories (item ids per row) or users (user ids per "
                            "row), not both")
        candidates = as_series("candidate", candidates)
        given = self._per_candidate("history" if histories is not None else "user",
                                    histories if histories is not None else users, candidates)
        self.unknown = UnknownIds()
        rows, reasons = self.ids.encode(
            candidates, histories=given if histories is not None else None,
            users=given if histories is None else None, separator=separator,
            unknown=self.unknown,
        )
        if self.ids.has_side_features:
            reasons = self._add_side_features(rows, reasons, features, users, candidates)
        bad = reasons.is_not_null()
        if bad.any():
            first = int(bad.arg_true()[0])
            more = int(bad.sum()) - 1
            raise DataError(f"row {first}: {ACTION.sub('', reasons[first])}"
                            + (f" (and {more} more bad row(s))" if more else ""))
        self.unknown.warn()
        return rows

    def _per_candidate(self, name: str, values: Any, candidates: pl.Series) -> pl.Series:
        """``values`` as a Series of one value per candidate (one value is repeated for all)."""
        given = as_series(name, values)
        if len(given) == 1 and len(candidates) > 1:  # one user's candidates
            given = given.gather(np.zeros(len(candidates), dtype=np.int64))
        if len(given) != len(candidates):
            raise DataError(f"{len(given)} {name}(s) for {len(candidates)} candidate(s): "
                            "give one per candidate (or one for all)")
        return given

    def _add_side_features(self, rows: Encoded, reasons: pl.Series, features: Any, users: Any,
                           candidates: pl.Series) -> pl.Series:
        """Set ``rows.side`` from ``features`` (a mapping or frame of the feature columns) and
        ``users``; return ``reasons`` with the side features' bad rows added."""
        features = {} if features is None else features
        missing = [name for name in self.feature_columns if name not in features]
        if missing:
            raise DataError(f"the run reads {self.ids.describe_features()}: give "
                            f"{', '.join(map(repr, missing))} (features=, or columns of the "
                            "frame), one value per row")
        if self.ids.user_features and users is None:
            raise DataError(f"the run reads {self.ids.describe_features()}: give the rows' "
                            "user ids (users=, or a user column of the frame)")
        columns = {name: self._per_candidate(name, features[name], candidates)
                   for name in self.feature_columns}
        if users is not None:
            users = self._per_candidate("user", users, candidates)
        rows.side, reasons = self.ids.side_features(columns, users, reasons, unknown=self.unknown)
        return reasons


# ------------------------------------------------------------------------------------ loading


def saved_model_dir(run: Path, seed: int | None) -> Path:
    """The saved model folder of ``run``: ``seed_<seed>`` of a ``camn train`` run (its first
    seed by default), or ``run`` itself when it is a saved model folder (``config.json``, as
    ``camn benchmark --keep-runs`` leaves them)."""
    if RunFolder(run).results.is_file():
        seeds = read_results(run)["seeds"]
        seed = seeds[0] if seed is None else seed
        if seed not in seeds:
            raise DataError(f"seed {seed} is not in the run {run}; it has seeds {seeds}")
        return seed_folder(run, seed).root
    if SeedFolder(run).config.is_file():
        return run
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    raise DataError(f"{run} is not a camn train run (no {RUN_RESULTS}) nor a saved model "
                    f"(no {CONFIG})")


def run_store_path(directory: Path) -> Path:
    """The store a saved model was trained on, as its ``config.json`` records it."""
    path = SeedFolder(directory).config
    try:
        data = json.loads(path.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        data = None
    if not isinstance(data, str):
        raise DataError(f"{path} does not record the store the model was trained on ('data'): "
                        f"{DAMAGED}, or name the store (store=, --data)")
    return Path(data)


def model_inputs(run: str | Path, seed: int | None, store: str | Path | None) -> list[Path]:
    """What a command that loads ``run`` reads, which its output must never be or be inside:
    the run and its store (``store``, else the one the run records, where it can be read)."""
    paths = [Path(run)]
    if store is not None:
        return [*paths, Path(store)]
    try:
        return [*paths, run_store_path(saved_model_dir(Path(run), seed))]
    except DataError:  # a damaged run: loading it names the problem
        return paths


def load(
    run: str | Path,
    seed: int | None = None,
    *,
    store: str | Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> Predictor:
    """The :class:`Predictor` of a trained run.

    ``run``: a ``camn train`` output folder (``seed`` picks one of its seeds, default the
    first) or one saved model folder (``seed_<s>/``, or a ``camn benchmark --keep-runs`` run).
    ``store``: the prepared store whose vocabularies to use (default: the one the run was
    trained on, recorded in its ``config.json``); it must match the model's spec.
    """
    directory = saved_model_dir(Path(run), seed)
    root = Path(store) if store is not None else run_store_path(directory)
    if not ((root / "schema.json").is_file() or (root / MANIFEST).is_file()):
        origin = "" if store is not None else f" (recorded in {SeedFolder(directory).config})"
        raise DataError(f"{root}{origin} is not a prepared store; name the store the run was "
                        "trained on (store=, --data)")
    prepared = open_store(root)
    prepared.check_contents()
    resolved = resolve_device(device)
    model, config = load_model(directory, device=str(resolved))
    if config["spec"] != FeatureSpec.from_schema(prepared.schema).to_dict():
        raise DataError(f"{root} does not match the store the run was trained on "
                        "(attributes, vocabulary sizes or history length differ)")
    check_vocabularies(config, prepared)
    if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    return Predictor(model, config, prepared, resolved, batch_size)


