"""Table 2 (models x datasets, test AUC) and Table 3 (ablations), with paired tests.

Every cell is the mean ± sample standard deviation (ddof = 1) over seeds:
:class:`camn.stats.Stat`, the one rule of every table and summary. Each CAMN build is compared
*paired* over seeds with DMIN, the model it builds on, and with its ablations
(:class:`camn.stats.PairedTest`). Display names and the ablations of each model come from the
registry (``@register(..., display=..., ablation_of=...)``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence

from camn.models.registry import ablations, display_name, model_names
from camn.results import HEALTH_METRICS, RunResult
from camn.stats import ALPHA, PairedTest, Stat, format_p

# the paper's rows, in its Table 2 and Table 3 order: what ``--models all`` runs
PAPER_MODELS = ("wide-deep", "pnn", "din", "dien", "dhan", "mind", "comirec-sa", "dmin",
                "camn-loss", "camn-route", "camn")
REFERENCE = "dmin"  # what every model with ablations is compared with: DMIN, the one CAMN builds on
# extensions beyond the paper and what each is compared with
EXTENSIONS = (("camn-tied", "dmin"), ("camn-tied", "camn"))
ROUTING = ("routing_overall", "routing_item", "routing_user", "routing_item_matched",
           "routing_user_matched")


def all_models(registered: Iterable[str]) -> list[str]:
    """What ``--models all`` runs: the :data:`PAPER_MODELS` that are registered, in the paper's
    order (a model registered later, a preset say, is run by name and does not change it)."""
    present = set(registered)
    return [m for m in PAPER_MODELS if m in present]


def ablation_rows(models: Sequence[str]) -> list[str]:
    """The Table 3 rows among ``models`` (in row order): each model's registered ablations,
    then the model itself, model by model."""
    present, families = set(models), ablations()
    return [m for family in paper_order(families) for m in (*families[family], family)
            if m in present]


def comparison_pairs() -> list[tuple[str, str]]:
    """The paired comparisons: every model that has ablations against DMIN and against each
    of them, then the extensions'."""
    families = ablations()
    return [*((family, b) for family in paper_order(families)
              for b in (REFERENCE, *families[family])), *EXTENSIONS]


def paper_order(models: Iterable[str]) -> list[str]:
    """Models in the paper's row order; the other registered ones after them by name, each
    ablation just before the model it ablates; unknown models last, in their given order."""
    models = list(dict.fromkeys(models))
    rank = {name: i for i, name in enumerate(PAPER_MODELS)}
    ablated = {name: family for family, names in ablations().items() for name in names}
    registered = set(model_names())

    def key(model: str) -> tuple:
        if model in rank:
            return (0, rank[model])
        if model in ablated:
            return (1, ablated[model], 0, model)
        if model in registered:
            return (1, model, 1, model)
        return (2, models.index(model))

    return sorted(models, key=key)


def metric_values(
    rows: Sequence[RunResult], dataset: str, model: str, metric: str
) -> dict[int, float]:
    """seed -> finite value of one metric for one (dataset, model)."""
    values = {r.seed: r.metric(metric) for r in rows if r.dataset == dataset and r.model == model}
    return {seed: v for seed, v in values.items() if v is not None and math.isfinite(v)}


def summarize(
    rows: Sequence[RunResult], metrics: Sequence[str]
) -> dict[str, dict[str, dict[str, Stat]]]:
    """dataset -> model -> metric -> :class:`Stat` over seeds."""
    out: dict[str, dict[str, dict[str, Stat]]] = {}
    for dataset, model in dict.fromkeys((r.dataset, r.model) for r in rows):
        out.setdefault(dataset, {})[model] = {
            m: Stat.of(metric_values(rows, dataset, model, m).values()) for m in metrics
        }
    return out


def fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "–"


def paired_test(
    rows: Sequence[RunResult], dataset: str, a: str, b: str, metric: str = "test_auc"
) -> PairedTest | None:
    """Paired comparison of ``a`` and ``b`` over their common seeds; None if one is missing."""
    va, vb = metric_values(rows, dataset, a, metric), metric_values(rows, dataset, b, metric)
    return PairedTest.of(a, b, va, vb) if va and vb else None


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def auc_table(
    summary: dict[str, dict[str, dict[str, Stat]]],
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: int,
) -> list[str]:
    """Models x datasets, test AUC mean ± std, the best mean of each dataset in bold."""
    best = {
        ds: max((summary[ds][m]["test_auc"].mean for m in models if m in summary.get(ds, {})
                 and summary[ds][m]["test_auc"].n), default=math.nan)
        for ds in datasets
    }

    def cell(ds: str, m: str) -> str:
        stat = summary.get(ds, {}).get(m, {}).get("test_auc")
        if stat is None or stat.n == 0:
            return "–"
        text = stat.cell(seeds=seeds)
        return f"**{text}**" if stat.mean == best[ds] else text

    return _table(["model", *datasets], ([display_name(m), *(cell(ds, m) for ds in datasets)]
                                         for m in models))


def metrics_table(
    summary: dict[str, dict[str, dict[str, Stat]]], datasets: Sequence[str], models: Sequence[str]
) -> list[str]:
    """gAUC and log loss, mean ± std, one column pair per dataset."""
    header = ["model"] + [f"{ds} {what}" for ds in datasets for what in ("gAUC", "log loss")]

    def cells(m: str) -> list[str]:
        out = []
        for ds in datasets:
            stats_ = summary.get(ds, {}).get(m)
            out += [stats_[k].cell() if stats_ else "–" for k in ("test_gauc", "test_logloss")]
        return out

    return _table(header, ([display_name(m), *cells(m)] for m in models))


def speed_table(
    summary: dict[str, dict[str, dict[str, Stat]]], datasets: Sequence[str], models: Sequence[str]
) -> list[str]:
    """Training samples/s (mean over seeds), epochs run and training time, per model."""

    def cell(ds: str, m: str) -> str:
        s = summary.get(ds, {}).get(m)
        if not s or s["samples_per_second"].n == 0:
            return "–"
        return (f"{s['samples_per_second'].mean:,.0f}/s, {s['epochs'].mean:.1f} epochs, "
                f"{s['train_seconds'].mean:,.0f} s")

    return _table(["model", *datasets], ([display_name(m), *(cell(ds, m) for ds in datasets)]
                                         for m in models))


def routing_table(
    summary: dict[str, dict[str, dict[str, Stat]]],
    datasets: Sequence[str],
    models: Sequence[str],
    num_slots: dict[str, int],
) -> list[str]:
    """Routing recovery (overall / item-level / user-level / both after the best relabelling of
    the routing columns) against chance 1/k."""
    header = ["model"] + [f"{ds} (chance 1/{num_slots[ds]} = {1 / num_slots[ds]:.2f})"
                          for ds in datasets]

    def cell(ds: str, m: str) -> str:
        s = summary.get(ds, {}).get(m)
        if not s or s["routing_overall"].n == 0:
            return "–"
        return " / ".join(f"{s[k].mean:.3f}" for k in ROUTING)

    return _table(header, ([display_name(m), *(cell(ds, m) for ds in datasets)] for m in models))


def health_table(
    summary: dict[str, dict[str, dict[str, Stat]]], datasets: Sequence[str], models: Sequence[str]
) -> list[str]:
    """Attention health on the test split (means over seeds of the means over heads): entropy
    relative to uniform over the keys a query may see, mean |logit|, and L_d (Eq. 7)."""

    def cell(ds: str, m: str) -> str:
        s = summary.get(ds, {}).get(m)
        if not s or s["attention_entropy"].n == 0:
            return "–"
        diversity = s["attention_diversity"]
        return (f"{s['attention_entropy'].mean:.3f} / {s['attention_abs_logit'].mean:.3f} / "
                + (f"{diversity.mean:.3f}" if diversity.n else "–"))

    return _table(["model", *datasets], ([display_name(m), *(cell(ds, m) for ds in datasets)]
                                         for m in models))


def comparison_lines(
    rows: Sequence[RunResult], datasets: Sequence[str], pairs: Sequence[tuple[str, str]]
) -> list[str]:
    """One line per dataset and pair: difference, spread, t-test and verdict."""
    body = []
    for ds in datasets:
        for a, b in pairs:
            test = paired_test(rows, ds, a, b)
            if test is None:
                continue
            lead = ("yes" if test.exceeds_spread else "no") if test.n > 1 else "–"
            body.append([
                ds, f"{display_name(a)} − {display_name(b)}", str(test.n),
                f"{test.mean:+.4f} ± {fmt(test.std)}", fmt(test.spread), lead,
                "–" if not math.isfinite(test.t) else f"{test.t:.2f}",
                "–" if not math.isfinite(test.p) else format_p(test.p).removeprefix("p = "),
                test.verdict(display_name),
            ])
    if not body:
        return []
    header = ["dataset", "difference", "seeds", "mean ± std", "seed spread", "lead > spread",
              "t", "p", "verdict"]
    return _table(header, body)


def settings_by_scope(configs: Mapping[tuple[str, str], Mapping[str, object]]
                      ) -> dict[str, dict[str, object]]:
    """The settings of each (dataset, model), grouped where they agree: those of every run
    (key ``every run``), then of each dataset's runs, then each (dataset, model)'s own."""

    def items(config: Mapping[str, object]) -> set[tuple[str, str]]:
        return {(key, json.dumps(value, sort_keys=True)) for key, value in config.items()}

    def common(group: list[set[tuple[str, str]]]) -> set[tuple[str, str]]:
        return set.intersection(*group) if group else set()

    every = common([items(c) for c in configs.values()])
    scopes: dict[str, set[tuple[str, str]]] = {"every run": every}
    for dataset in dict.fromkeys(ds for ds, _ in configs):
        shared = common([items(c) for (ds, _), c in configs.items() if ds == dataset]) - every
        scopes[dataset] = shared
        for (ds, model), config in configs.items():
            if ds == dataset:
                scopes[f"{ds}, {display_name(model)}"] = items(config) - every - shared
    order = {key: i for i, key in enumerate(next(iter(configs.values()), {}))}
    return {scope: {key: json.loads(text) for key, text in sorted(
                pairs, key=lambda pair: (order.get(pair[0], len(order)), pair[0]))}
            for scope, pairs in scopes.items() if pairs or scope == "every run"}


def settings_text(scopes: Mapping[str, Mapping[str, object]]) -> str:
    """``every run: epochs 2, lr 0.002; tiny (last): batch_size 256``."""
    return "; ".join(f"{scope}: " + ", ".join(f"{k} {v}" for k, v in values.items())
                     for scope, values in scopes.items())


def render_markdown(
    rows: Sequence[RunResult],
    *,
    datasets: Sequence[str],
    models: Sequence[str],
    seeds: Sequence[int],
    meta: dict[str, dict],
    command: str,
    settings: Mapping[str, Mapping[str, object]],
) -> str:
    """The whole ``table.md``: Tables 2 and 3, paired tests, gAUC/log loss, speed, routing.

    meta: dataset -> {"num_slots", "train", "valid", "test"} (from the store schema);
    settings: scope -> settings, as :func:`settings_by_scope` groups them.
    """
    metrics = ["test_auc", "test_logloss", "test_gauc", "valid_auc", "epochs",
               "train_seconds", "samples_per_second", *ROUTING, *HEALTH_METRICS]
    summary = summarize(rows, metrics)
    models = paper_order(models)
    table3 = ablation_rows(models)
    main = [m for m in models if m not in table3 or m in ablations()]
    n = len(seeds)
    lines = [
        "# Benchmark results", "",
        "Produced by:", "", "```", command, "```", "",
        f"Seeds: {', '.join(map(str, seeds))} ({n} per cell; cells with fewer finished runs "
        "say so). Cells: test AUC, mean ± sample std (ddof = 1) over seeds; the best mean of "
        "each dataset in bold. Training settings: " + settings_text(settings) + ".", "",
    ]
    lines += [f"- {ds}: k = {meta[ds]['num_slots']} attributes, train / valid / test samples "
              f"{meta[ds]['train']:,} / {meta[ds]['valid']:,} / {meta[ds]['test']:,}"
              for ds in datasets]
    lines += ["", "## Table 2: comparison with baselines (test AUC)", ""]
    lines += auc_table(summary, datasets, main, n)
    if table3:
        lines += ["", "## Table 3: ablation study (test AUC)", ""]
        lines += auc_table(summary, datasets, table3, n)
    comparison = comparison_lines(rows, datasets, comparison_pairs())
    if comparison:
        lines += [
            "", "## Is CAMN's lead more than seed noise?", "",
            "Per-seed differences of test AUC (same seed = same split and initialisation "
            "seed), their mean ± std, the larger of the two models' own seed std (\"seed "
            f"spread\"), and a paired t-test over seeds (scipy.stats.ttest_rel, α = {ALPHA}).",
            "",
        ]
        lines += comparison
    lines += ["", "## gAUC and log loss (test, mean ± std over seeds)", ""]
    lines += metrics_table(summary, datasets, models)
    lines += ["", "## Training speed (mean over seeds)", ""]
    lines += speed_table(summary, datasets, models)
    attentive = [m for m in models if any(
        summary.get(ds, {}).get(m, {}).get("attention_entropy", Stat.of([])).n
        for ds in datasets)]
    if attentive:
        lines += [
            "", "## Attention health (test split, mean over seeds)", "",
            "Of each model's attention over the history (DMIN and CAMN: the extractor's "
            "self-attention heads; the baselines: as each model's docstring says): entropy of "
            "each query's weights relative to uniform over the keys it may see (1 = uniform, "
            "0 = one key; for raw scores without a softmax, of their normalised "
            "magnitudes), mean |logit| before the softmax (scaling included), and the "
            "diversity loss L_d (Eq. 7) where a model has k heads to compare; entropy and "
            "|logit| are means over the heads. Per-head values are in results.jsonl.", "",
        ]
        lines += health_table(summary, datasets, attentive)
    routed = [m for m in models if any(
        summary.get(ds, {}).get(m, {}).get("routing_overall", Stat.of([])).n for ds in datasets)]
    if routed:
        lines += [
            "", "## Routing recovery (planted drivers)", "",
            "Share of history clicks whose highest routing score P falls on the attribute that "
            "drove the click, against chance 1/k: overall / item-level / user-level / item-level "
            "and user-level again after the best one-to-one relabelling of the k routing columns "
            "(Eq. 2-4 give column r no meaning beyond 'scales head r').", "",
        ]
        lines += routing_table(summary, datasets, routed, {ds: meta[ds]["num_slots"]
                                                           for ds in datasets})
    return "\n".join(lines) + "\n"


def summary_dict(
    rows: Sequence[RunResult], *, datasets: Sequence[str], models: Sequence[str],
    meta: dict[str, dict], command: str, configs: Mapping[tuple[str, str], dict],
    seeds: Sequence[int],
) -> dict:
    """``summary.json``: means/stds per dataset x model x metric, the paired tests, and each
    (dataset, model)'s resolved configuration."""
    metrics = ["test_auc", "test_logloss", "test_gauc", "valid_auc", "best_epoch", "epochs",
               "train_seconds", "samples_per_second", *ROUTING, *HEALTH_METRICS]
    summary = summarize(rows, metrics)
    out: dict = {"command": command, "seeds": list(seeds), "datasets": {}}
    for ds in datasets:
        entry: dict = {"meta": meta[ds], "models": {}, "paired_tests": {},
                       "configs": {m: c for (d, m), c in configs.items() if d == ds}}
        for m in paper_order(models):
            if m in summary.get(ds, {}):
                entry["models"][m] = {k: s.to_dict() for k, s in summary[ds][m].items() if s.n}
        for a, b in comparison_pairs():
            test = paired_test(rows, ds, a, b)
            if test is not None:
                entry["paired_tests"][f"{a} vs {b}"] = test.to_dict(display_name)
        out["datasets"][ds] = entry
    return out
