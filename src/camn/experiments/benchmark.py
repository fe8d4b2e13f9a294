"""``camn benchmark``: every (dataset, model, seed) run, then the paper's Tables 2 and 3.

Each run's training settings are resolved from layers (:mod:`camn.config`: TrainConfig's
defaults < a ``--config`` file's ``[train]``, ``[data.NAME]``, ``[model.NAME]`` < the command
line), so one benchmark can train each store with its own batch size and epoch cap.

Runs go in the order dataset, seed, model, so an interrupted benchmark already holds complete
seeds for the paired comparisons. Each finished run is appended to ``OUT/results.jsonl`` at once
(one :class:`~camn.results.RunResult` a line, with its resolved configuration and environment;
flushed and synced); a restart skips the runs found there, after dropping a half-written last
line. A restart whose settings for a finished (dataset, model) differ from those its rows record
is refused: the rows of one (dataset, model) always come from one configuration.
``OUT/benchmark.json`` records every (dataset, model)'s configuration and the config file;
``results.csv`` is an export of the rows, rewritten with the tables.

With ``--jobs N`` the runs go to N spawned processes (safe with CUDA: several small runs can
share one GPU), each with ``--threads`` torch threads (default: the available cores / N). Each
run depends only on its own (store, model, seed, settings), so the numbers are those of a
sequential run with the same ``--threads`` (on CPU, float reductions may depend on the thread
count); checked bit for bit on CPU (tests) and on one H100 (2 jobs vs 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from camn.argtypes import positive_int, seed_int
from camn.config import (
    VOLATILE,
    ConfigFile,
    Settings,
    add_training_flags,
    plan,
)
from camn.data.raw import DataError
from camn.experiments.tables import (
    all_models,
    render_markdown,
    settings_by_scope,
    summarize,
    summary_dict,
)
from camn.outputs import BENCHMARK, SEED, check_output, remove_owned, writing
from camn.provenance import dataset_name, environment, resolved_config
from camn.results import ResultsLog, RunResult, write_csv

__all__ = ["Dataset", "Outcome", "Run", "Settings", "run_benchmark", "train_run"]
RESULTS, EXPORT, RECORD = "results.jsonl", "results.csv", "benchmark.json"
BENCHMARK_DEFAULTS = {"models": "all", "seeds": 5, "seed": 1, "jobs": 1}
Key = tuple[str, str, int]


@dataclass(frozen=True)
class Dataset:
    """A prepared store taking part: its display name (dir name and protocol) and sizes."""

    name: str
    path: str
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        from camn.data.shards import open_store

        store = open_store(path)
        store.check_trainable()  # before the first run, not once per run
        schema = store.schema
        meta = {"num_slots": len(store.attributes), "path": str(path), **schema["splits"]}
        return cls(dataset_name(path, schema["protocol"]), str(path), meta)


@dataclass(frozen=True)
class Run:
    dataset: str
    store: str
    model: str
    seed: int
    out_dir: str | None = None

    @property
    def key(self) -> Key:
        return (self.dataset, self.model, self.seed)


def say(line: str) -> None:
    """Print a line and flush it: runs in worker processes print too, and a pipe must get
    every line in the order it was written."""
    print(line, flush=True)


class EpochLine:
    """A trainer hook (the methods of :class:`camn.train.epoch_log.Hook`, which this module
    does not import: it would import torch) printing one line a finished epoch, naming its
    run (a benchmark trains several at once)."""

    def __init__(self, run: Run, epochs: int) -> None:
        self.name, self.epochs = f"{run.dataset} {run.model} seed {run.seed}", epochs

    def start(self, seed: int, history: list[dict]) -> None:
        pass

    def epoch(self, seed: int, record: dict) -> None:
        say(f"  {self.name} epoch {record['epoch']}: loss {record['loss']:.4f}, valid AUC "
            f"{record['valid_auc']:.4f}, {record['seconds']:.1f} s (at most {self.epochs} "
            "epochs)")

    def end(self, seed: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


def train_run(run: Run, settings: Settings) -> dict:
    """Train and test one (store, model, seed) with the trainer; returns its result dict with
    the ``environment`` it ran in. With ``settings.verbose`` each finished epoch prints a line
    (:class:`EpochLine`)."""
    from camn.data.shards import open_store
    from camn.train.epoch_log import console
    from camn.train.loop import train_one

    config = settings.config(run.store, run.model)
    if run.out_dir is not None:
        remove_owned(run.out_dir, SEED)  # left by an interrupted run
    out_dir = None if run.out_dir is None else Path(run.out_dir)
    hooks = [EpochLine(run, config.epochs)] if settings.verbose else []
    with console(logging.WARNING):  # the trainer's own epoch lines do not name the run
        result = train_one(open_store(run.store), config, seed=run.seed, out_dir=out_dir,
                           hooks=hooks)
    return {**result, "environment": environment(config.device, config.precision)}


@dataclass
class Outcome:
    """What a benchmark produced: results of the planned runs, the files, and failed runs."""

    rows: list[RunResult]
    datasets: list[Dataset]
    models: list[str]
    seeds: list[int]
    markdown: str
    failures: list[tuple[Run, str]]
    out: Path


def resolve_models(spec: str | Sequence[str]) -> list[str]:
    """``all`` (the paper's models: ``tables.all_models``) or a comma-separated list ->
    registered model names (checked)."""
    from camn.models.registry import model_names

    registered = model_names()
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        given = spec if isinstance(spec, str) else ",".join(spec)
        raise DataError(f"--models {given!r} names no model; give all (the paper's models) "
                        "or a comma-separated list, e.g. camn,dmin (camn models lists them)")
    if names == ["all"]:
        return all_models(registered)
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise DataError(f"unknown model(s) {', '.join(unknown)}; registered: "
                        f"{', '.join(registered)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Planned:
    """Each (dataset, model)'s configuration: ``resolved`` (every setting and option, as its
    rows record it) and ``shown`` (the settings and the options given, for the tables)."""

    resolved: dict[tuple[str, str], dict]
    shown: dict[tuple[str, str], dict]


def planned_configs(
    datasets: Sequence[Dataset], models: Sequence[str], settings: Settings
) -> Planned:
    """Each (dataset, model)'s configuration, its model options also built once on the store,
    so that what a store rules out (``camn:q=9`` with k = 5 attributes) or a bad layer stops
    the benchmark before its first run."""
    from camn.data.shards import open_store
    from camn.models.base import FeatureSpec
    from camn.models.registry import check_options

    planned = Planned({}, {})
    for dataset in datasets:
        spec = FeatureSpec.from_schema(open_store(dataset.path).schema)
        for model in models:
            config = settings.config(dataset.path, model)
            if config.options:
                try:
                    check_options(model, config.options, spec)
                except DataError as error:
                    raise DataError(f"store {dataset.path}: {error}") from None
            key = (dataset.name, model)
            planned.resolved[key] = resolved_config(config)
            shown = {k: v for k, v in config.to_dict().items()
                     if k not in ("model", "options", *VOLATILE)}
            planned.shown[key] = shown | {f"options.{k}": v for k, v in config.options.items()}
    return planned


def plan_runs(
    datasets: Sequence[Dataset], models: Sequence[str], seeds: Sequence[int],
    runs_dir: Path | None,
) -> list[Run]:
    """Every run, ordered dataset, seed, model."""
    return [
        Run(ds.name, ds.path, model, seed,
            None if runs_dir is None else str(runs_dir / _slug(ds.name) / model / f"seed{seed}"))
        for ds in datasets for seed in seeds for model in models
    ]


def _slug(name: str) -> str:
    return name.replace(" (", ".").replace(")", "").replace(" ", "_")


def changes(recorded: Mapping, planned: Mapping) -> list[str]:
    """``key old -> new`` for each setting (``options.KEY`` for a model option) that differs,
    the :data:`~camn.config.VOLATILE` ones left out."""

    def flat(config: Mapping) -> dict:
        out = {k: v for k, v in config.items() if k not in VOLATILE and k != "options"}
        return out | {f"options.{k}": v for k, v in (config.get("options") or {}).items()}

    old, new = flat(recorded), flat(planned)
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]


def check_finished(out: Path, finished: Sequence[RunResult],
                   configs: Mapping[tuple[str, str], dict]) -> None:
    """Refuse to add runs to a (dataset, model) whose finished rows have other settings."""
    for result in finished:
        planned = configs.get((result.dataset, result.model))
        if planned is None:
            continue
        changed = changes(result.config, planned)
        if changed:
            raise DataError(f"{out} holds runs of {result.model} on {result.dataset} made with "
                            f"other training settings ({', '.join(changed)}); use another --out")


def record(out: Path, configs: Mapping[tuple[str, str], dict], config_file: ConfigFile | None,
           command: str) -> None:
    """``benchmark.json``: every (dataset, model)'s configuration (those of earlier calls kept),
    the latest config file and command."""
    path = out / RECORD
    previous = json.loads(path.read_text()).get("settings") if path.is_file() else None
    settings: dict = {}
    if isinstance(previous, dict) and all(isinstance(v, dict) for v in previous.values()):
        settings = {ds: dict(models) for ds, models in previous.items()}
    for (dataset, model), config in configs.items():
        settings.setdefault(dataset, {})[model] = config
    document = {"settings": settings, "command": command, "config_file": None if config_file
                is None else {"path": config_file.path, "text": config_file.text}}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _init_worker(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _start_worker(threads: int | None) -> None:
    """A --jobs worker. Ctrl-C reaches the whole terminal process group, but only the parent
    acts on it (it ends the workers), so that no worker prints a traceback of its own. tqdm's
    default lock is a multiprocessing one, which an ended worker leaves to the resource tracker
    (a "leaked semaphore" warning); a worker draws no bars, so a thread lock does."""
    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    _init_worker(threads)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while worker processes are spawned: they inherit it from their first
    instruction on, before Python would install its KeyboardInterrupt handler in them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the runs not started and end those in progress now, instead of letting the pool
    wait for them (finished runs are already in results.jsonl; a restart redoes the others)."""
    processes = list((pool._processes or {}).values())  # no public accessor before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch threads inside the block (the caller's count restored after)."""
    import torch

    previous = torch.get_num_threads()
    _init_worker(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def execute(
    runs: Sequence[Run],
    settings: Settings,
    results: ResultsLog,
    configs: Mapping[tuple[str, str], dict],
    *,
    jobs: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] = say,
) -> list[tuple[Run, str]]:
    """Train every run, appending each result as it finishes; returns the failed runs.

    A failed run is reported and left out of results.jsonl (a restart retries it); the others
    go on.
    """
    failures: list[tuple[Run, str]] = []
    done = 0

    def finish(run: Run, result: dict | None, error: BaseException | None) -> None:
        nonlocal done
        done += 1
        prefix = f"[{done}/{len(runs)}] {run.dataset} {run.model} seed {run.seed}"
        if error is not None or result is None:
            failures.append((run, f"{type(error).__name__}: {error}"))
            log(f"{prefix}: FAILED ({type(error).__name__}: {error})")
            return
        row = RunResult.from_metrics(
            {**result, "seed": run.seed}, dataset=run.dataset, store=run.store, model=run.model,
            config=configs[(run.dataset, run.model)], environment=result["environment"])
        results.append(row)
        log(f"{prefix}: {describe_row(row)}")

    train = train_run  # looked up now, so that a patched module attribute is used
    if jobs <= 1:
        with _torch_threads(threads):
            for run in runs:
                try:
                    result = train(run, settings)
                except Exception as error:  # one broken run must not stop a long benchmark
                    finish(run, None, error)
                else:
                    finish(run, result, None)
        return failures
    threads = threads or max(1, available_cores() // jobs)  # no oversubscription
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(threads,)) as pool:
        with _sigint_ignored():  # submit spawns the workers
            pending: dict[Future, Run] = {pool.submit(train, r, settings): r for r in runs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    run = pending.pop(future)
                    error = future.exception()
                    finish(run, None if error else future.result(), error)
        except BaseException:  # Ctrl-C included
            _stop_workers(pool)
            raise
    return failures


def describe_row(row: RunResult) -> str:
    def fmt(key: str, digits: int = 4) -> str:
        value = row.metric(key)
        return "–" if value is None else f"{value:.{digits}f}"

    text = (f"test AUC {fmt('test_auc')}, gAUC {fmt('test_gauc')}, log loss "
            f"{fmt('test_logloss')}, best epoch {row.best_epoch}/{row.epochs}, "
            f"{fmt('train_seconds', 1)} s, {fmt('samples_per_second', 0)} samples/s")
    if row.routing is not None:
        text += (f", routing recovery {fmt('routing_overall', 3)} (item {fmt('routing_item', 3)}"
                 f", user {fmt('routing_user', 3)})")
    return text


def run_benchmark(
    data: Sequence[str | Path],
    models: str | Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    settings: Settings,
    *,
    jobs: int = 1,
    threads: int | None = None,
    keep_runs: bool = False,
    command: str = "",
    config_file: ConfigFile | None = None,
    log: Callable[[str], None] = say,
) -> Outcome:
    """Run what results.jsonl lacks, then write table.md, summary.json, auc.png, results.csv."""
    if not seeds:
        raise DataError("no seeds to run")
    out = check_output(out, BENCHMARK, inputs=data)  # before the stores are read
    datasets = [Dataset.open(path) for path in data]
    names = [ds.name for ds in datasets]
    if len(set(names)) < len(names):
        raise DataError(f"two stores share a name and protocol: {names}; rename one directory")
    model_list = resolve_models(models)
    configured = planned_configs(datasets, model_list, settings)
    configs = configured.resolved
    if (out / EXPORT).is_file() and not (out / RESULTS).is_file():
        raise DataError(f"{out} holds a results.csv of an earlier camn version, without "
                        f"{RESULTS}; use another --out")
    results = ResultsLog(out / RESULTS)
    finished = results.load()
    check_finished(out, finished, configs)
    out.mkdir(parents=True, exist_ok=True)
    record(out, configs, config_file, command)
    runs = plan_runs(datasets, model_list, seeds, out / "runs" if keep_runs else None)
    done = {result.key for result in finished}
    todo = [r for r in runs if r.key not in done]
    log(f"{len(runs)} runs planned ({len(datasets)} dataset(s) x {len(model_list)} model(s) x "
        f"{len(seeds)} seed(s)); {len(runs) - len(todo)} already in {results.path}")
    started = time.perf_counter()
    failures = execute(todo, settings, results, configs, jobs=jobs, threads=threads, log=log)
    if todo:
        log(f"{len(todo) - len(failures)} run(s) finished in {time.perf_counter() - started:.0f} s")
    planned = {r.key for r in runs}
    rows = [r for r in results.load() if r.key in planned]
    markdown = write_reports(rows, datasets, model_list, list(seeds), out, configured, command)
    return Outcome(rows, datasets, model_list, list(seeds), markdown, failures, out)


def write_reports(
    rows: list[RunResult], datasets: Sequence[Dataset], models: Sequence[str], seeds: list[int],
    out: Path, planned: Planned, command: str,
) -> str:
    """table.md, summary.json, auc.png and the results.csv export; returns the markdown."""
    from camn.experiments.plots import plot_auc

    names = [ds.name for ds in datasets]
    meta = {ds.name: ds.meta for ds in datasets}
    markdown = render_markdown(rows, datasets=names, models=models, seeds=seeds, meta=meta,
                               command=command, settings=settings_by_scope(planned.shown))
    (out / "table.md").write_text(markdown, encoding="utf-8")
    summary = summary_dict(rows, datasets=names, models=models, meta=meta, command=command,
                           configs=planned.resolved, seeds=seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_auc(summarize(rows, ["test_auc"]), names, models, out / "auc.png")
    write_csv(rows, out / EXPORT)
    return markdown


def add_command_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, object],
                          config_file: bool = True) -> None:
    """What to run, shared by ``camn benchmark`` and ``camn demo`` (None when not given);
    ``config_file``: whether the command takes ``--config`` (the flags' help says what they
    override)."""
    parser.add_argument("--models", default=None,
                        help="all (the paper's models), or a comma-separated list "
                        f"(default: {defaults['models']})")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help=f"number of seeds (default: {defaults['seeds']})")
    parser.add_argument("--seed", type=seed_int, default=None,
                        help="first seed: seeds FIRST, FIRST+1, .. (default: 1)")
    parser.add_argument("--option", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                        help="a model option, repeatable: camn:q=2 for CAMN, embed_dim=8 for "
                        "every model run; values are read as JSON where they parse")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help=f"runs trained at once, in separate processes (default: "
                        f"{defaults['jobs']})")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per run (default: torch's own, or cores / jobs "
                             "with --jobs; the same value gives the same numbers either way)")
    add_training_flags(parser, defaults, exclude=("progress",), config_file=config_file)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file of the benchmark: models, seeds, training settings, "
                        "stores (see configs/); flags override it")
    parser.add_argument("--data", nargs="+", metavar="DIR",
                        help="prepared store(s) (camn prepare); default: the --config file's")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep every run's weights under OUT/runs")
    add_command_arguments(parser, BENCHMARK_DEFAULTS)


def invocation(args: argparse.Namespace, fallback: Sequence[str]) -> str:
    """The command as typed (``args.argv``, set by :func:`camn.cli.main`), else ``fallback``."""
    argv = getattr(args, "argv", None)
    return shlex.join(["camn", *argv] if argv else fallback)


def run(args: argparse.Namespace) -> int:
    from camn.train.distributed import resolve_device
    from camn.train.precision import check_precision

    resolved = plan(args, BENCHMARK_DEFAULTS, resolve_models)
    # progress bars only where one run at a time draws on a terminal
    settings = Settings(*resolved.settings.layers, progress=resolved.jobs == 1 and os.isatty(2))
    for store in resolved.stores:
        for model in resolved.models:
            config = settings.config(store, model)
            check_precision(config.precision, resolve_device(config.device))
    with writing(args.out):
        outcome = run_benchmark(
            resolved.stores, resolved.models, resolved.seeds, args.out, settings,
            jobs=resolved.jobs, threads=resolved.threads, keep_runs=args.keep_runs,
            command=invocation(args, ["benchmark", "--out", args.out]),
            config_file=resolved.config_file,
        )
    say(outcome.markdown)
    print(f"written: {outcome.out / RESULTS}, results.csv, table.md, summary.json, auc.png")
    for run_, error in outcome.failures:
        print(f"failed: {run_.dataset} {run_.model} seed {run_.seed}: {error}")
    return 1 if outcome.failures else 0
