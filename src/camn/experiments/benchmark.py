"""``camn benchmark``: every (dataset, model, seed) run, then the paper's Tables 2 and 3.

Runs go in the order dataset, seed, model, so an interrupted benchmark already holds complete
seeds for the paired comparisons. Each finished run is appended to ``OUT/results.csv`` at once
(flushed and synced); a restart skips the runs found there, after dropping a half-written last
line. ``OUT/benchmark.json`` records the training settings, and a restart with other settings is
refused: the rows of one results file always come from one configuration.

With ``--jobs N`` the runs go to N spawned processes (safe with CUDA: several small runs can
share one GPU), each with ``--threads`` torch threads (default: the available cores / N). Each
run depends only on its own (store, model, seed, settings), so the numbers are those of a
sequential run with the same ``--threads`` (on CPU, float reductions may depend on the thread
count); checked bit for bit on CPU (tests) and on one H100 (2 jobs vs 1).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from camn.argtypes import positive_finite_float, positive_int, seed_int
from camn.data.raw import DataError
from camn.experiments.tables import all_models, render_markdown, summarize, summary_dict
from camn.outputs import BENCHMARK, SEED, check_output, remove_owned
from camn.train.precision import PRECISIONS

RESULT_COLUMNS = (
    "dataset", "model", "seed", "test_auc", "test_logloss", "test_gauc", "valid_auc",
    "best_epoch", "epochs", "train_seconds", "samples_per_second",
    "routing_overall", "routing_item", "routing_user", "routing_item_matched",
    "routing_user_matched",
)
ROUTING_START = RESULT_COLUMNS.index("routing_overall")
INT_COLUMNS = frozenset({"seed", "best_epoch", "epochs"})
TEXT_COLUMNS = frozenset({"dataset", "model"})
Row = dict[str, object]
Key = tuple[str, str, int]


@dataclass
class Settings:
    """Training settings shared by every run; ``options`` holds model -> constructor options."""

    epochs: int = 30
    batch_size: int = 2048
    eval_batch_size: int = 8192
    lr: float = 0.002
    patience: int = 3
    precision: str = "fp32"
    length_buckets: bool = False
    compile: bool = False
    options: dict[str, dict] = field(default_factory=dict)
    device: str = "auto"
    progress: bool = False
    verbose: bool = True  # the trainer's per-epoch lines

    def recorded(self) -> dict:
        """What must not change between the runs of one results file."""
        out = asdict(self)
        del out["device"], out["progress"], out["verbose"]
        return out


@dataclass(frozen=True)
class Dataset:
    """A prepared store taking part: its display name (dir name and protocol) and sizes."""

    name: str
    path: str
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        from camn.data.store import PreparedStore

        store = PreparedStore(path)
        store.check_trainable()  # before the first run, not once per run
        schema = store.schema
        meta = {"num_slots": len(store.attributes), "path": str(path), **schema["splits"]}
        return cls(f"{Path(path).resolve().name} ({schema['protocol']})", str(path), meta)


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


def train_run(run: Run, settings: Settings) -> dict:
    """Train and test one (store, model, seed) with the trainer; returns its result dict."""
    from camn.data.store import PreparedStore
    from camn.train.loop import TrainConfig, train_one

    config = TrainConfig(
        model=run.model, options=dict(settings.options.get(run.model, {})),
        epochs=settings.epochs, batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size, lr=settings.lr, patience=settings.patience,
        device=settings.device, precision=settings.precision,
        length_buckets=settings.length_buckets, compile=settings.compile,
        progress=settings.progress,
    )
    if run.out_dir is not None:
        remove_owned(run.out_dir, SEED)  # left by an interrupted run
    out_dir = None if run.out_dir is None else Path(run.out_dir)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with contextlib.nullcontext() if settings.verbose else quiet:
        return train_one(PreparedStore(run.store), config, seed=run.seed, out_dir=out_dir)


def result_row(run: Run, result: dict) -> Row:
    """One results.csv row from the trainer's result dict (routing recovery flattened)."""
    routing = result.get("routing_recovery") or {}
    row: Row = {"dataset": run.dataset, "model": run.model, "seed": run.seed}
    for column in RESULT_COLUMNS[3:]:
        if column.startswith("routing_"):
            row[column] = routing.get(column.removeprefix("routing_"))
        else:
            row[column] = result.get(column)
    return row


class ResultsFile:
    """``results.csv``: one row per finished run, appended and synced as each run ends."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[Row]:
        """The finished runs (first row of each key); a half-written last line is cut off."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with self.path.open("r+b") as handle:
                handle.truncate(len(data))
        lines = data.decode("utf-8").splitlines()
        if not lines:
            return []
        header = next(csv.reader(lines[:1]))
        if header != list(RESULT_COLUMNS[: len(header)]) or len(header) < ROUTING_START:
            raise DataError(f"{self.path} has columns {header}; expected {list(RESULT_COLUMNS)}")
        rows: dict[Key, Row] = {}
        missing = [""] * (len(RESULT_COLUMNS) - len(header))  # files of older versions
        for number, fields in enumerate(csv.reader(lines[1:]), start=2):
            row = self._parse(fields + missing if len(fields) == len(header) else fields, number)
            rows.setdefault((str(row["dataset"]), str(row["model"]), int(row["seed"])), row)
        return list(rows.values())

    def _parse(self, fields: list[str], number: int) -> Row:
        if len(fields) != len(RESULT_COLUMNS):
            raise DataError(f"{self.path}:{number}: {len(fields)} fields, "
                            f"expected {len(RESULT_COLUMNS)}")
        row: Row = {}
        try:
            for column, text in zip(RESULT_COLUMNS, fields, strict=True):
                if column in TEXT_COLUMNS:
                    row[column] = text
                elif text == "":
                    row[column] = None
                else:
                    row[column] = int(text) if column in INT_COLUMNS else float(text)
        except ValueError as error:
            raise DataError(f"{self.path}:{number}: {error}") from None
        return row

    def append(self, row: Row) -> None:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if new:
                writer.writerow(RESULT_COLUMNS)
            writer.writerow(["" if row.get(c) is None else _text(row[c]) for c in RESULT_COLUMNS])
            handle.flush()
            os.fsync(handle.fileno())


def _text(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


@dataclass
class Outcome:
    """What a benchmark produced: rows of the planned runs, the files, and failed runs."""

    rows: list[Row]
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
    if names == ["all"]:
        return all_models(registered)
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise DataError(f"unknown model(s) {', '.join(unknown)}; registered: "
                        f"{', '.join(registered)}")
    return list(dict.fromkeys(names))


def parse_options(items: Sequence[str], models: Sequence[str]) -> dict[str, dict]:
    """``model:key=value`` items -> {model: {key: value}}; values read as JSON when they parse
    (``2``, ``true``, ``0.5``), else kept as text. Checked against the model's signature (names,
    types, domains); :func:`check_options_on` then checks them against each store."""
    from camn.models.registry import check_options

    options: dict[str, dict] = {}
    for item in items:
        model, sep, assignment = item.partition(":")
        key, eq, text = assignment.partition("=")
        if not sep or not eq or not key:
            raise DataError(f"--option {item!r}: expected MODEL:KEY=VALUE, e.g. camn:q=2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(model, {})[key] = value
    for model, values in options.items():
        if model not in models:
            raise DataError(f"--option for {model!r}, which is not benchmarked "
                            f"({', '.join(models)})")
        check_options(model, values)
    return options


def check_options_on(datasets: Sequence[Dataset], options: dict[str, dict]) -> None:
    """Build each model given options once on each store, so that what a store rules out
    (``camn:q=9`` with k = 5 attributes) stops the benchmark before its first run."""
    from camn.data.store import PreparedStore
    from camn.models.base import FeatureSpec
    from camn.models.registry import check_options

    for dataset in datasets:
        spec = FeatureSpec.from_schema(PreparedStore(dataset.path).schema)
        for model, values in options.items():
            try:
                check_options(model, values, spec)
            except DataError as error:
                raise DataError(f"store {dataset.path}: {error}") from None


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


def check_settings(out: Path, settings: Settings) -> None:
    """Record the settings in OUT/benchmark.json; refuse to mix runs of other settings."""
    path = out / "benchmark.json"
    recorded = settings.recorded()
    if path.is_file():
        previous = json.loads(path.read_text())["settings"]
        if previous != recorded:
            changed = ", ".join(f"{k} {previous.get(k)!r} -> {recorded.get(k)!r}"
                                for k in sorted(set(previous) | set(recorded))
                                if previous.get(k) != recorded.get(k))
            raise DataError(f"{out} holds runs made with other training settings ({changed}); "
                            "use another --out")
    else:
        path.write_text(json.dumps({"settings": recorded}, indent=2, sort_keys=True) + "\n")


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
    wait for them (finished runs are already in results.csv; a restart redoes the others)."""
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
    results: ResultsFile,
    *,
    jobs: int = 1,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[tuple[Run, str]]:
    """Train every run, appending each row as it finishes; returns the failed runs.

    A failed run is reported and left out of results.csv (a restart retries it); the others go on.
    """
    failures: list[tuple[Run, str]] = []
    done = 0

    def finish(run: Run, result: dict | None, error: BaseException | None) -> None:
        nonlocal done
        done += 1
        prefix = f"[{done}/{len(runs)}] {run.dataset} {run.model} seed {run.seed}"
        if error is not None:
            failures.append((run, f"{type(error).__name__}: {error}"))
            log(f"{prefix}: FAILED ({type(error).__name__}: {error})")
            return
        row = result_row(run, result or {})
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


def describe_row(row: Row) -> str:
    def fmt(key: str, digits: int = 4) -> str:
        value = row.get(key)
        return "–" if value is None else f"{value:.{digits}f}"

    text = (f"test AUC {fmt('test_auc')}, gAUC {fmt('test_gauc')}, log loss "
            f"{fmt('test_logloss')}, best epoch {row.get('best_epoch')}/{row.get('epochs')}, "
            f"{fmt('train_seconds', 1)} s, {fmt('samples_per_second', 0)} samples/s")
    if row.get("routing_overall") is not None:
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
    log: Callable[[str], None] = print,
) -> Outcome:
    """Run what results.csv lacks, then write table.md, summary.json and auc.png."""
    if not seeds:
        raise DataError("no seeds to run")
    out = check_output(out, BENCHMARK, inputs=data)  # before the stores are read
    datasets = [Dataset.open(path) for path in data]
    names = [ds.name for ds in datasets]
    if len(set(names)) < len(names):
        raise DataError(f"two stores share a name and protocol: {names}; rename one directory")
    model_list = resolve_models(models)
    check_options_on(datasets, settings.options)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    results = ResultsFile(out / "results.csv")
    runs = plan_runs(datasets, model_list, seeds, out / "runs" if keep_runs else None)
    finished = {(str(r["dataset"]), str(r["model"]), int(r["seed"])) for r in results.load()}
    todo = [r for r in runs if r.key not in finished]
    log(f"{len(runs)} runs planned ({len(datasets)} dataset(s) x {len(model_list)} model(s) x "
        f"{len(seeds)} seed(s)); {len(runs) - len(todo)} already in {results.path}")
    started = time.perf_counter()
    failures = execute(todo, settings, results, jobs=jobs, threads=threads, log=log)
    if todo:
        log(f"{len(todo) - len(failures)} run(s) finished in {time.perf_counter() - started:.0f} s")
    planned = {r.key for r in runs}
    rows = [r for r in results.load()
            if (str(r["dataset"]), str(r["model"]), int(r["seed"])) in planned]
    markdown = write_reports(rows, datasets, model_list, list(seeds), out, settings, command)
    return Outcome(rows, datasets, model_list, list(seeds), markdown, failures, out)


def write_reports(
    rows: list[Row], datasets: Sequence[Dataset], models: Sequence[str], seeds: list[int],
    out: Path, settings: Settings, command: str,
) -> str:
    """table.md, summary.json and auc.png from the rows; returns the markdown."""
    from camn.experiments.plots import plot_auc

    names = [ds.name for ds in datasets]
    meta = {ds.name: ds.meta for ds in datasets}
    recorded = settings.recorded()
    shown = {k: v for k, v in recorded.items() if k != "options" or v}
    markdown = render_markdown(rows, datasets=names, models=models, seeds=seeds, meta=meta,
                               command=command, settings=shown)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    summary = summary_dict(rows, datasets=names, models=models, meta=meta, command=command,
                           settings=recorded, seeds=seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_auc(summarize(rows, ["test_auc"]), names, models, out / "auc.png")
    return markdown


def add_training_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """Training options shared by ``camn benchmark`` and ``camn demo``."""
    d = {"epochs": 30, "batch_size": 2048, "patience": 3, "seeds": 5, "jobs": 1} | defaults
    parser.add_argument("--seeds", type=positive_int, default=d["seeds"], help="number of seeds")
    parser.add_argument("--seed", type=seed_int, default=1,
                        help="first seed (seeds FIRST, FIRST+1, ..)")
    parser.add_argument("--epochs", type=positive_int, default=d["epochs"], help="maximum epochs")
    parser.add_argument("--batch-size", type=positive_int, default=d["batch_size"],
                        help="training batch size")
    parser.add_argument("--eval-batch-size", type=positive_int, default=8192,
                        help="batch size of the validation and test scoring")
    parser.add_argument("--lr", type=positive_finite_float, default=0.002,
                        help="Adam learning rate")
    parser.add_argument("--patience", type=positive_int, default=d["patience"],
                        help="epochs without a better validation AUC before stopping")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--length-buckets", action="store_true",
                        help="batches of similar history lengths, cut to their longest history")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every model for training (minutes of compilation)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: autocast with fp32 master weights, where the device has bf16 "
                        "instructions (GPUs, CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--option", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="a model option, e.g. camn:q=2 (repeatable)")
    parser.add_argument("--jobs", type=positive_int, default=d["jobs"],
                        help="runs trained at once, in separate processes")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per run (default: torch's own, or cores / jobs "
                             "with --jobs; the same value gives the same numbers either way)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="prepared store(s) (camn prepare)")
    parser.add_argument("--models", default="all",
                        help="all (the paper's models), or a comma-separated list")
    parser.add_argument("--out", required=True, help="output directory (resumable)")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep every run's weights under OUT/runs")
    add_training_arguments(parser)


def settings_from_args(args: argparse.Namespace, models: Sequence[str]) -> Settings:
    """The settings of parsed arguments (their ranges checked by the parser's argtypes)."""
    return Settings(
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        lr=args.lr, patience=args.patience, precision=args.precision,
        length_buckets=args.length_buckets, compile=args.compile,
        options=parse_options(args.option, models), device=args.device,
        progress=args.jobs == 1 and os.isatty(2),
    )


def command_line(args: argparse.Namespace, head: Sequence[str]) -> str:
    """The command with every training setting explicit, so that it reproduces the table."""
    parts = [*head, "--seeds", str(args.seeds), "--seed", str(args.seed),
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
             "--eval-batch-size", str(args.eval_batch_size), "--lr", str(args.lr),
             "--patience", str(args.patience), "--device", args.device]
    if args.precision != "fp32":
        parts += ["--precision", args.precision]
    parts += ["--length-buckets"] * args.length_buckets + ["--compile"] * args.compile
    for item in args.option:
        parts += ["--option", item]
    if args.jobs > 1:
        parts += ["--jobs", str(args.jobs)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from camn.train.commands import resolve_device
    from camn.train.precision import check_precision

    check_precision(args.precision, resolve_device(args.device))
    models = resolve_models(args.models)
    settings = settings_from_args(args, models)
    head = ["camn", "benchmark", "--data", *args.data, "--models", ",".join(models),
            "--out", args.out] + ["--keep-runs"] * args.keep_runs
    seeds = list(range(args.seed, args.seed + args.seeds))
    outcome = run_benchmark(
        args.data, models, seeds, args.out, settings, jobs=args.jobs, threads=args.threads,
        keep_runs=args.keep_runs, command=command_line(args, head),
    )
    print(outcome.markdown)
    print(f"written: {outcome.out / 'results.csv'}, table.md, summary.json, auc.png")
    for run_, error in outcome.failures:
        print(f"failed: {run_.dataset} {run_.model} seed {run_.seed}: {error}")
    return 1 if outcome.failures else 0
