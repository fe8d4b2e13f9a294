"""Render one Table 2/3 report from several ``camn benchmark`` results files.

Used for docs/results.md, where each dataset ran as its own benchmark (its own batch size and
epoch cap, see benchmarks/gpu_paper_tables.sh):

    python benchmarks/combine_results.py --stores DIR [DIR ...] --results CSV [CSV ...] --out OUT
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from camn.experiments.benchmark import Dataset, ResultsFile
from camn.experiments.plots import plot_auc
from camn.experiments.tables import paper_order, render_markdown, summarize


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", required=True, help="the prepared stores")
    parser.add_argument("--results", nargs="+", required=True, help="results.csv files")
    parser.add_argument("--out", required=True, help="folder for table.md and auc.png")
    args = parser.parse_args()
    rows = [row for path in args.results for row in ResultsFile(path).load()]
    datasets = [Dataset.open(path) for path in args.stores]
    names = [d.name for d in datasets]
    models = paper_order({str(row["model"]) for row in rows})
    seeds = sorted({int(row["seed"]) for row in rows})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + shlex.join(sys.argv)
    markdown = render_markdown(rows, datasets=names, models=models, seeds=seeds,
                               meta={d.name: d.meta for d in datasets}, command=command,
                               settings={"see": "benchmarks/gpu_paper_tables.sh"})
    (out / "table.md").write_text(markdown, encoding="utf-8")
    plot_auc(summarize(rows, ["test_auc"]), names, models, out / "auc.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
