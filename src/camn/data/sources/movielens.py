"""MovieLens, the stand-in for the paper's movie-play data, k = 5 attributes.

Three layouts, told apart by the files in ``--path``:

- 100K: ``u.data`` (tab-separated user, item, rating, timestamp) and ``u.item`` (``|``-separated,
  latin-1: id, title, release date, video release date, URL, one 0/1 flag a genre; genre names
  from ``u.genre`` if present, else the standard 19).
- 1M (and 10M): ``ratings.dat`` (``user::movie::rating::timestamp``) and ``movies.dat``
  (``id::Title (Year)::Genre1|Genre2``, latin-1).
- later (ml-latest, 20M, 25M, 32M): ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``, titles quoted where they hold commas, UTF-8).

Attributes: item_id, genre_1, genre_2, genre_3 (the item's genres in the file's order, "none"
where it has fewer), release_decade ("1990s", from the release date, else from the "(1995)" in
the title, else unknown). The genre markers "unknown" (100K) and "(no genres listed)" (later
layouts) say the genres are not known: they are not genres, and an item with no other genre
gets unknown genres rather than "none". With ``--genres multi`` the three genre slots are one
multi-valued attribute instead, ``genres``: the bag of all the item's genres (Star Wars: Action,
Adventure, Romance, Sci-Fi, War, where the slots keep the first three), "none" where the file
lists none, unknown where it marks them unknown (attributes item_id, genres, release_decade).
Every rating counts as a click (implicit feedback),
unless ``--rating-labels T``: then every rating is a labelled impression, a click where the rating
is T or more and a logged non-click below (:mod:`camn.data.impressions`; the clicks make the
histories, the split is by time unless ``--split user``). With ``--user-features`` too, the user
table (``u.user`` of 100K, ``users.dat`` of 1M; the later layouts have none) gives every user
three categorical features: ``age`` in the 1M layout's age groups (under 18, 18-24, 25-34, 35-44,
45-49, 50-55, 56+; 100K's ages in years are put into them, 1M's group codes read as theirs),
``gender`` and ``occupation`` (100K: its name, 1M: its code 0-20). ``--context hour,weekday``
gives every impression the hour ("00" to "23") and the day of the week ("Mon" to "Sun") of its
rating's timestamp, read as Unix seconds in UTC, as context features. ``--genres multi`` and
``--context`` are for labelled impressions (``--rating-labels``), as are user features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from camn.data.features import CONTEXT
from camn.data.raw import BadInputReport, DataError, RawData
from camn.data.reading import (
    column_list,
    first_lines,
    line_blocks,
    null_reason,
    parse_bucketize,
    read_delimited,
    report_rows,
    skip_rows,
)
from camn.data.sources import _labels

NAME = "movielens"
HELP = "MovieLens ratings and movies: 100K (u.data/u.item), 1M (.dat) or later (.csv) layout"

ATTRIBUTES = ["item_id", "genre_1", "genre_2", "genre_3", "release_decade"]
MULTI_ATTRIBUTES = ["item_id", "genres", "release_decade"]  # --genres multi
GENRE_FORMS = ("slots", "multi")
GENRE_SEPARATOR = "|"  # joins the genres of a bag; no genre name holds it
GENRE_LIST = "_genres"  # the items readers' list of genre names in file order
TIME_CONTEXT = {"hour": "%H", "weekday": "%a"}  # --context name -> its strftime format (UTC)
NO_GENRE = "none"
UNKNOWN_GENRES = ("unknown", "(no genres listed)")
STANDARD_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
USER_FILES = {"100k": "u.user", "1m": "users.dat"}
USER_FIELDS = {  # layout -> (separator, field names)
    "100k": ("|", ["user", "age", "gender", "occupation", "zip"]),
    "1m": ("::", ["user", "gender", "age", "occupation", "zip"]),
}
AGE_GROUPS = ["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]
AGE_GROUP_STARTS = [18, 25, 35, 45, 50, 56]  # first age of every group but the first
LAYOUTS = {  # layout -> (ratings file, movies file)
    "100k": ("u.data", "u.item"),
    "1m": ("ratings.dat", "movies.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", required=True, type=Path, help="folder of the MovieLens files")
    labels = _labels.add_rating_label_arguments(parser, "rating")
    labels.add_argument(
        "--user-features", action="store_true",
        help="with --rating-labels: the users' age group, gender and occupation (u.user, "
        "users.dat) as side features of the model's output network",
    )
    labels.add_argument(
        "--genres", choices=GENRE_FORMS, default="slots",
        help="slots: the first three genres as attributes genre_1..3; multi (with "
        "--rating-labels): every genre of the item, one multi-valued attribute 'genres'",
    )
    labels.add_argument(
        "--context", type=parse_bucketize, default=[], metavar="NAME[,NAME...]",
        help="with --rating-labels: hour and/or weekday of the rating's timestamp (UTC) as "
        "context features of each impression, e.g. hour,weekday",
    )


def detect_layout(folder: Path) -> str:
    """The first layout whose ratings file is in ``folder``; its movies file must be there too."""
    if folder.is_file():
        names = {name for pair in LAYOUTS.values() for name in pair}
        hint = (f"give its folder, {folder.parent}" if folder.name in names
                else "give the folder of the MovieLens files, e.g. ml-100k")
        raise DataError(f"{folder} is a file; --path takes a folder: {hint}")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    for layout, (ratings, movies) in LAYOUTS.items():
        if (folder / ratings).is_file():
            if not (folder / movies).is_file():
                raise DataError(f"{folder} has {ratings} but not {movies}")
            return layout
    expected = "; ".join(f"{r} + {m}" for r, m in LAYOUTS.values())
    raise DataError(f"{folder} holds no MovieLens files; expected one of: {expected}")


def read_lines(path: Path, encoding: str, report: BadInputReport) -> pl.DataFrame:
    """Every non-blank line of a (small) file; an empty file is a :class:`DataError`."""
    blocks = list(line_blocks(path, encoding, report))
    if not blocks or sum(len(block) for block in blocks) == 0:
        raise DataError(f"{path}: the file is empty")
    return pl.concat(blocks, how="vertical")


def split_fields(
    lines: pl.DataFrame, separator: str, names: list[str], path: Path, report: BadInputReport
) -> pl.DataFrame:
    """One string column a field; lines with another number of fields are skipped and counted."""
    parts = lines["text"].str.split(separator)
    good = parts.list.len() == len(names)
    report_rows(
        report, path, lines.filter(~good)["line"].to_numpy(),
        f"line does not have {len(names)} {separator!r}-separated fields (line skipped)",
    )
    fields = parts.filter(good).list.to_struct(fields=names).struct.unnest()
    return fields.with_columns(line=lines.filter(good)["line"])


def parse_ratings(
    path: Path, separator: str, names: list[str], report: BadInputReport, skip_to: int = 0,
    rating: bool = False,
) -> pl.DataFrame:
    """user, item, time (and with ``rating`` the rating, a float) of every rating line after
    line ``skip_to``, parsed block by block.

    ``names`` names the fields and must include user, item, time (and ``_rating``).
    """
    parsed = []
    for block in line_blocks(path, "utf-8", report):
        lines = block.filter(pl.col("line") > skip_to)
        fields = split_fields(lines, separator, names, path, report)
        time = fields["time"].str.strip_chars().cast(pl.Int64, strict=False)
        report_rows(
            report, path, fields.filter(time.is_null())["line"].to_numpy(),
            "timestamp is not an integer (line skipped)",
        )
        kept = [pl.col("user").str.strip_chars(), pl.col("item").str.strip_chars()]
        good = time.is_not_null()
        if rating:
            value = fields["_rating"].str.strip_chars().cast(pl.Float64, strict=False)
            value = pl.select(pl.when(value.is_finite()).then(value)).to_series()
            report_rows(
                report, path, fields.filter(good & value.is_null())["line"].to_numpy(),
                "rating is not a number (line skipped)",
            )
            good &= value.is_not_null()
            kept.append(value.alias("rating"))
        parsed.append(fields.select(*kept, time=time).filter(good))
    ratings = pl.concat(parsed, how="vertical") if parsed else pl.DataFrame()
    if len(ratings) == 0:
        raise DataError(f"{path}: no rating could be read")
    return ratings


def csv_rating_names(path: Path) -> tuple[list[str], int]:
    """Field names of ratings.csv from its header (userId, movieId, timestamp renamed), and
    the header's line number."""
    number, header = first_lines(path, 1)[0]
    columns = [c.strip() for c in header.decode("utf-8-sig", errors="replace").split(",")]
    rename = {"userId": "user", "movieId": "item", "timestamp": "time"}
    for column in rename:
        if column not in columns:
            raise DataError(
                f"{path}: no column {column!r} in the header; "
                f"available columns: {column_list(columns)}"
            )
        if columns.count(column) > 1:
            raise DataError(f"{path}:{number}: the header names the column {column!r} twice")
    rename["rating"] = "_rating"
    return [rename.get(c, f"_{i}") for i, c in enumerate(columns)], number


def genre_slots(genres: pl.Expr) -> list[pl.Expr]:
    """genre_1..3 from a list of genre names in file order (unknown markers dropped)."""
    known, unknown = known_genres(genres)
    return [
        pl.when(unknown & (known.list.len() == 0))
        .then(None)
        .otherwise(known.list.get(i, null_on_oob=True).fill_null(NO_GENRE))
        .alias(f"genre_{i + 1}")
        for i in range(3)
    ]


def genre_bag(genres: pl.Expr) -> pl.Expr:
    """``genres``: every genre of a list of genre names in file order (unknown markers
    dropped) joined by ``GENRE_SEPARATOR``, "none" where the list is empty, null where it
    holds an unknown marker only."""
    known, unknown = known_genres(genres)
    return (pl.when(unknown & (known.list.len() == 0)).then(None)
            .when(known.list.len() == 0).then(pl.lit(NO_GENRE))
            .otherwise(known.list.join(GENRE_SEPARATOR)).alias("genres"))


def known_genres(genres: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """The genres of a list of genre names that are not unknown markers, and whether the list
    holds a marker."""
    known = genres.list.eval(pl.element().filter(~pl.element().is_in(UNKNOWN_GENRES)))
    unknown = genres.list.eval(pl.element().is_in(UNKNOWN_GENRES).any()).list.first()
    return known, unknown


def genre_columns(genres: pl.Expr, form: str) -> list[pl.Expr]:
    """The genre attributes of ``--genres`` ``form`` from a list of genre names."""
    return genre_slots(genres) if form == "slots" else [genre_bag(genres)]


def decade(*texts: pl.Expr) -> pl.Expr:
    """'1990s' from the first of ``texts`` that holds a year (texts already reduced to a year)."""
    year = pl.coalesce([t.cast(pl.Int32, strict=False) for t in texts])
    return pl.when(year.is_not_null()).then(
        ((year // 10) * 10).cast(pl.String) + pl.lit("s")
    ).alias("release_decade")


def title_year(title: pl.Expr) -> pl.Expr:
    """The year of 'Toy Story (1995)' (also '(2006-2007)' ranges: the first year)."""
    return title.str.strip_chars().str.extract(r"\((\d{4})(?:[-–]\d{4})?\)$")


def read_genre_names(folder: Path, report: BadInputReport) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        return list(STANDARD_GENRES)
    fields = read_lines(path, "latin-1", report)["text"].str.split("|")
    names = fields.list.get(0).to_list()
    order = fields.list.get(1, null_on_oob=True).cast(pl.Int64, strict=False)
    if order.null_count():
        raise DataError(f"{path}: every line must be 'name|index'")
    return [names[i] for i in np.argsort(order.to_numpy(), kind="stable")]


def items_100k(folder: Path, report: BadInputReport) -> pl.DataFrame:
    """item, its genre names in file order (``GENRE_LIST``) and release_decade of u.item."""
    path = folder / "u.item"
    genres = read_genre_names(folder, report)
    flags = [f"_g{i}" for i in range(len(genres))]
    names = ["item", "title", "release", "video_release", "url", *flags]
    fields = split_fields(read_lines(path, "latin-1", report), "|", names, path, report)
    if len(fields) == 0:
        raise DataError(
            f"{path}: no line has the {len(names)} fields expected "
            f"(5, then a flag for each of the {len(genres)} genres)"
        )
    flagged = (
        pl.when(pl.col(f).str.strip_chars() == "1").then(pl.lit(g))
        for f, g in zip(flags, genres, strict=True)
    )
    genre_list = pl.concat_list(list(flagged)).list.drop_nulls()
    return fields.select(
        pl.col("item").str.strip_chars(),
        genre_list.alias(GENRE_LIST),
        decade(pl.col("release").str.extract(r"(\d{4})\s*$"), title_year(pl.col("title"))),
    )


def items_1m(folder: Path, report: BadInputReport) -> pl.DataFrame:
    """item, its genre names in file order (``GENRE_LIST``) and release_decade of movies.dat."""
    path = folder / "movies.dat"
    names = ["item", "title", "genres"]
    fields = split_fields(read_lines(path, "latin-1", report), "::", names, path, report)
    return fields.select(
        pl.col("item").str.strip_chars(),
        pl.col("genres").str.strip_chars().str.split("|").alias(GENRE_LIST),
        decade(title_year(pl.col("title"))),
    )


def items_csv(folder: Path, report: BadInputReport) -> pl.DataFrame:
    """item, its genre names in file order (``GENRE_LIST``) and release_decade of movies.csv."""
    path = folder / "movies.csv"
    frame = read_delimited(path, ",", '"', report)
    columns = frame.columns[:-1]  # the last is __line
    for column in ("movieId", "title", "genres"):
        if column not in columns:
            raise DataError(
                f"{path}: no column {column!r}; available columns: {column_list(columns)}"
            )
    frame = skip_rows(frame, null_reason("movieId"), path, report)
    return frame.select(
        pl.col("movieId").str.strip_chars().alias("item"),
        pl.col("genres").str.split("|").alias(GENRE_LIST),
        decade(title_year(pl.col("title"))),
    )


def age_group(age: pl.Expr) -> pl.Expr:
    """The age group (``AGE_GROUPS``) of an age in years, or of a 1M age code (the first age
    of its group); null where the age is not an integer."""
    years = age.str.strip_chars().cast(pl.Int64, strict=False)
    group = pl.when(years.is_null()).then(pl.lit(None, dtype=pl.String))
    for start, label in zip(AGE_GROUP_STARTS, AGE_GROUPS, strict=False):
        group = group.when(years < start).then(pl.lit(label))
    return group.otherwise(pl.lit(AGE_GROUPS[-1]))


def read_users(folder: Path, layout: str, report: BadInputReport) -> pl.DataFrame:
    """The user table (``RawData.users``): user, age group, gender, occupation, one row a
    user (a repeated user is bad input, counted with its line)."""
    if layout not in USER_FILES:
        raise DataError(f"--user-features: {folder} holds no user table (u.user or users.dat): "
                        "the ml-latest layouts have none")
    path = folder / USER_FILES[layout]
    if not path.is_file():
        raise DataError(f"--user-features: {path}: no such file")
    separator, names = USER_FIELDS[layout]
    fields = split_fields(read_lines(path, "latin-1", report), separator, names, path, report)
    frame = fields.select(
        pl.col("user").str.strip_chars(),
        age_group(pl.col("age")).alias("age"),
        *(pl.col(name).str.strip_chars() for name in ("gender", "occupation")),
        pl.col("line").alias("__line"),
    )
    return _labels.user_rows(frame, path, report)


def read(
    *,
    path: str | Path,
    rating_labels: float | None = None,
    negatives: int = 0,
    split: str | None = None,
    valid_from: str | None = None,
    test_from: str | None = None,
    user_features: bool = False,
    genres: str = "slots",
    context: list[str] | tuple[str, ...] = (),
    report: BadInputReport | None = None,
) -> RawData:
    """Read a MovieLens folder (any of the three layouts) into interactions and item attributes;
    with ``rating_labels`` every rating is a labelled impression, split and completed with
    ``negatives`` as :class:`~camn.data.sources._labels.SplitOptions` says, and with
    ``user_features`` too the users' age group, gender and occupation (``RawData.users``),
    with ``genres="multi"`` the genres as one multi-valued attribute and with ``context``
    (``hour``, ``weekday``) the rating's time as context features."""
    report = BadInputReport() if report is None else report
    splits = _labels.rating_split_options(rating_labels, negatives=negatives, split=split,
                                          valid_from=valid_from, test_from=test_from)
    labelled = rating_labels is not None
    check_side_options(labelled, user_features, genres, context)
    folder = Path(path)
    layout = detect_layout(folder)
    ratings_file, movies_file = (folder / name for name in LAYOUTS[layout])
    fields = ["user", "item", "_rating", "time"]
    if layout == "100k":
        interactions = parse_ratings(ratings_file, "\t", fields, report, rating=labelled)
        items = items_100k(folder, report)
    elif layout == "1m":
        interactions = parse_ratings(ratings_file, "::", fields, report, rating=labelled)
        items = items_1m(folder, report)
    else:
        names, header_line = csv_rating_names(ratings_file)
        interactions = parse_ratings(ratings_file, ",", names, report, skip_to=header_line,
                                     rating=labelled)
        items = items_csv(folder, report)
    origin = {"source": NAME, "layout": layout, "files": [str(ratings_file), str(movies_file)]}
    users = read_users(folder, layout, report) if user_features else None
    if users is not None:
        origin["files"].append(str(folder / USER_FILES[layout]))
    if labelled:
        interactions = _labels.rating_labels(interactions, rating_labels)
        interactions = interactions.with_columns(time_context(pl.col("time"), context))
        origin["labels"] = _labels.split_options(splits, "s") | {"rating_labels": rating_labels}
        notes = [f"labelled impressions: {int(interactions['label'].sum()):,} of "
                 f"{len(interactions):,} ratings are {rating_labels:g} or more (clicks)"]
    else:
        notes = [f"implicit feedback: all {len(interactions):,} ratings count as clicks"]
    attributes = ATTRIBUTES if genres == "slots" else MULTI_ATTRIBUTES
    if genres == "multi":
        origin["multi_valued"] = {"genres": GENRE_SEPARATOR}
    if context:
        origin["context"] = list(context)
    return RawData(
        interactions=interactions,
        items=items.select("item", *genre_columns(pl.col(GENRE_LIST), genres),
                           "release_decade"),
        attributes=list(attributes),
        origin=origin,
        notes=notes,
        users=users,
    )


def check_side_options(
    labelled: bool, user_features: bool, genres: str, context: list[str] | tuple[str, ...]
) -> None:
    """Refuse (DataError) a ``genres`` form or a ``context`` name that does not exist, and the
    options of labelled impressions without ``--rating-labels``."""
    if genres not in GENRE_FORMS:
        raise DataError(f"--genres {genres!r}: one of {', '.join(GENRE_FORMS)}")
    unknown = [name for name in context if name not in TIME_CONTEXT]
    if unknown or len(set(context)) < len(context):
        raise DataError(f"--context {','.join(context)}: distinct names among "
                        f"{', '.join(TIME_CONTEXT)} (of the rating's timestamp)")
    if user_features:
        _labels.refuse_user_features(labelled, "--rating-labels T")
    if genres == "multi":
        _labels.refuse_unlabelled("--genres multi", labelled, "--rating-labels T")
    if context:
        _labels.refuse_unlabelled("--context", labelled, "--rating-labels T")


def time_context(seconds: pl.Expr, names: list[str] | tuple[str, ...]) -> list[pl.Expr]:
    """The context columns ``names`` (``TIME_CONTEXT``) of Unix ``seconds``, read in UTC:
    the hour "00".."23" and the weekday "Mon".."Sun"."""
    moment = pl.from_epoch(seconds, time_unit="s")
    return [moment.dt.strftime(TIME_CONTEXT[name]).alias(CONTEXT + name) for name in names]
