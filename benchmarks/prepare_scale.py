"""How fast, and in how much memory, ``camn prepare amazon`` reads a Books-sized review file.

Writes a synthetic file in McAuley's 2014 layout (reviews: one JSON object a line with the usual
fields; metadata: one Python-literal dict a line), N reviews by N/10 users on N/20 items with
skewed item popularity, then times ``camn prepare amazon ... --protocol last`` in a subprocess.
Prints one JSON line and one sentence: reviews per second and the child's peak resident memory.

    python benchmarks/prepare_scale.py --reviews 2000000 [--gzip] [--dir DIR --keep]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

CHUNK = 1_000_000
WORDS = [
    "great", "book", "read", "story", "author", "characters", "love", "good", "plot", "recommend",
    "writing", "series", "enjoyed", "boring", "ending", "page", "novel", "interesting", "well",
    "written", "fun", "classic", "history", "life",
]
POOL = 4096  # distinct texts of each kind, drawn per review
CATEGORIES = [("Literature & Fiction", "Genre Fiction"), ("Literature & Fiction", "Classics"),
              ("Children's Books", "Animals"), ("History", "Europe"), ("Science", "Physics"),
              ("Mystery, Thriller & Suspense", "Thrillers"), ("Romance", "Historical")]
T0, T1 = 946_684_800, 1_406_073_600  # 2000-01-01 .. 2014-07-23


def phrases(rng: np.random.Generator, n: int, words: int) -> pl.Series:
    """``n`` texts of ``words`` random words each, drawn from a pool of :data:`POOL` texts."""
    picks = rng.integers(0, len(WORDS), size=(POOL, words))
    pool = pl.Series([" ".join(WORDS[w] for w in row) for row in picks])
    return pool[rng.integers(0, POOL, size=n)]


def ids(prefix: str, index: np.ndarray, width: int) -> pl.Series:
    """Identifiers like ``A0000000001234``: the prefix, then the zero-padded index."""
    return prefix + pl.Series(index).cast(pl.String).str.zfill(width)


def review_chunk(rng: np.random.Generator, n: int, users: int, items: int) -> bytes:
    """``n`` review lines (JSON), items drawn with a skewed popularity."""
    times = rng.integers(T0, T1, size=n)
    helpful = rng.integers(0, 5, size=(n, 1))
    frame = pl.DataFrame({
        "reviewerID": ids("A", rng.integers(0, users, size=n), 13),
        "asin": ids("B", (items * rng.random(n) ** 2).astype(np.int64), 9),
        "reviewerName": phrases(rng, n, 1),
        "helpful": np.hstack([helpful, helpful + rng.integers(0, 3, size=(n, 1))]),
        "reviewText": phrases(rng, n, 40),
        "overall": rng.integers(1, 6, size=n).astype(np.float64),
        "summary": phrases(rng, n, 3),
        "unixReviewTime": times,
        "reviewTime": pl.Series(times * 1_000_000).cast(pl.Datetime("us")).dt.strftime("%m %d, %Y"),
    })
    return frame.write_ndjson().encode()


def meta_lines(rng: np.random.Generator, items: int) -> bytes:
    """One Python-literal dict a line per item; 1 in 10 has no price, 1 in 5 no brand."""
    pick = rng.integers(0, len(CATEGORIES), size=items)
    level2 = pl.Series([repr(path[0]) for path in CATEGORIES])[pick]  # "Children's Books"
    level3 = pl.Series([repr(path[1]) for path in CATEGORIES])[pick]
    price = pl.Series(np.round(rng.lognormal(2.5, 0.8, size=items), 2)).cast(pl.String)
    has_price, has_brand = rng.random(items) > 0.1, rng.random(items) > 0.2
    frame = pl.DataFrame({
        "asin": ids("B", np.arange(items), 9), "title": phrases(rng, items, 4),
        "price": pl.select(pl.when(pl.Series(has_price)).then(", 'price': " + price)
                           .otherwise(pl.lit(""))).to_series(),
        "rank": pl.Series(rng.integers(1, 5_000_000, size=items)).cast(pl.String),
        "level2": level2, "level3": level3,
        "brand": pl.select(pl.when(pl.Series(has_brand))
                           .then(", 'brand': '" + phrases(rng, items, 1) + " Press'")
                           .otherwise(pl.lit(""))).to_series(),
    })
    line = pl.concat_str(
        pl.lit("{'asin': '"), "asin", pl.lit("', 'title': '"), "title", pl.lit("'"), "price",
        pl.lit(", 'salesRank': {'Books': "), "rank", pl.lit("}, 'categories': [['Books', "),
        "level2", pl.lit(", "), "level3", pl.lit("]]"), "brand", pl.lit("}"),
    )
    return ("\n".join(frame.select(line).to_series().to_list()) + "\n").encode()


def write_files(root: Path, reviews: int, users: int, items: int, use_gzip: bool,
                seed: int) -> tuple[Path, Path]:
    """Write the reviews (chunk by chunk) and the metadata; return their paths."""
    rng = np.random.default_rng(seed)
    suffix = ".json.gz" if use_gzip else ".json"
    paths = root / f"reviews_Synthetic{suffix}", root / f"meta_Synthetic{suffix}"

    def open_out(path: Path):
        return gzip.open(path, "wb", compresslevel=1) if use_gzip else path.open("wb")

    with open_out(paths[0]) as out:
        for start in range(0, reviews, CHUNK):
            out.write(review_chunk(rng, min(CHUNK, reviews - start), users, items))
    with open_out(paths[1]) as out:
        out.write(meta_lines(rng, items))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, help="default: reviews / 10")
    parser.add_argument("--items", type=int, help="default: reviews / 20")
    parser.add_argument("--gzip", action="store_true", help="write .json.gz (level 1)")
    parser.add_argument("--dir", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    users, items = args.users or args.reviews // 10, args.items or args.reviews // 20
    root = Path(tempfile.mkdtemp(prefix="camn_scale_", dir=args.dir))
    try:
        start = time.perf_counter()
        reviews_path, meta_path = write_files(root, args.reviews, users, items, args.gzip,
                                              args.seed)
        write_s = time.perf_counter() - start
        command = [sys.executable, "-m", "camn", "prepare", "amazon", "--reviews",
                   str(reviews_path), "--meta", str(meta_path), "--protocol", "last",
                   "--out", str(root / "store")]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        prepare_s = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"camn prepare failed ({done.returncode}):\n{done.stderr}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        result = {
            "reviews": args.reviews, "users": users, "items": items, "gzip": args.gzip,
            "reviews_bytes": reviews_path.stat().st_size, "write_s": round(write_s, 1),
            "prepare_s": round(prepare_s, 1),
            "reviews_per_s": round(args.reviews / prepare_s),
            "peak_rss_mib": round(peak_mib),
        }
        print(json.dumps(result))
        print(f"camn prepare amazon read {args.reviews:,} reviews "
              f"({result['reviews_bytes'] / 2**30:.2f} GiB{', gzip' if args.gzip else ''}) and "
              f"wrote the store in {prepare_s:.1f} s: {result['reviews_per_s']:,} reviews/s, "
              f"peak memory {peak_mib / 1024:.2f} GiB.")
        print(done.stdout.strip())
    finally:
        if args.keep:
            print(f"files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
