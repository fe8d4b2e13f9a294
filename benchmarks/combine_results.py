"""Render one Table 2/3 report from several ``camn benchmark`` results files.

One benchmark over several stores (``camn benchmark --config configs/paper-tables.toml``)
writes the combined report itself; this script renders one from result files made apart, such
as the committed docs/bench/*.csv tables:

    python benchmarks/combine_results.py --stores DIR [DIR ...] --results FILE [FILE ...] \
        [--models NAME,...] [--config FILE] --out OUT

Where two files hold a row of the same (store, model, seed), the earlier file's counts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from camn.experiments.benchmark import Dataset
from camn.experiments.plots import plot_auc
from camn.experiments.tables import paper_order, render_markdown, summarize
from camn.results import ResultsLog, RunResult, read_csv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", required=True, help="the prepared stores")
    parser.add_argument("--results", nargs="+", required=True,
                        help="results.jsonl files of camn benchmark, or CSV exports")
    parser.add_argument("--models", help="the models to show, comma-separated (default: every "
                        "model of the rows)")
    parser.add_argument("--config", help="the config file the results came from, cited in "
                        "table.md")
    parser.add_argument("--out", required=True, help="folder for table.md and auc.png")
    args = parser.parse_args()
    rows: dict[tuple[str, str, int], RunResult] = {}
    for path in args.results:
        for row in ResultsLog(path).load() if path.endswith(".jsonl") else read_csv(path):
            rows.setdefault(row.key, row)
    shown = args.models.split(",") if args.models else None
    rows = [row for row in rows.values() if shown is None or row.model in shown]
    datasets = [Dataset.open(path) for path in args.stores]
    names = [d.name for d in datasets]
    models = paper_order({row.model for row in rows})
    seeds = sorted({row.seed for row in rows})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + shlex.join(sys.argv)
    markdown = render_markdown(rows, datasets=names, models=models, seeds=seeds,
                               meta={d.name: d.meta for d in datasets}, command=command,
                               settings={"every run": {"see": args.config or "the results"}})
    (out / "table.md").write_text(markdown, encoding="utf-8")
    plot_auc(summarize(rows, ["test_auc"]), names, models, out / "auc.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
