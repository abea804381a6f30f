"""``fs``: each command opens the store, makes one library call and prints the result."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cli import models as models_cli
from cli.common import OneLineErrors, handle_errors
from featurestore.embedders import DEFAULT_MODEL
from featurestore.errors import FeatureStoreError
from featurestore.inputs import clean

if TYPE_CHECKING:  # the CLI imports the library on use: `fs --help` stays fast
    from featurestore.api import FeatureStore
    from featurestore.learning.train import ClassifierChoice

clean.SPACY_WITHOUT_TORCH = True  # this process's spaCy needs no torch (featurestore.inputs.clean._import_spacy)

app = typer.Typer(
    help="featurestore: embed each tweet once, keep the vectors in HDF5, train and search from the store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models_cli.app, name="models")

StoreOpt = typer.Option(None, "--store", envvar="FS_STORE", help="Store directory (default: ./store).")
ModelOpt = typer.Option(
    DEFAULT_MODEL,
    "--model",
    "-m",
    help="Embedder: minilm (default, offline), elmo (TF Hub google/elmo/3), hub:HANDLE, elmo:PATH, "
    "a release from 'fs models list', tuned:NAME (made by 'fs tune'), or py:MODULE:ATTR (your own Embedder subclass). "
    "ELMo models take a layer mix suffix: #elmo (default), #top or #all.",
)
ReadModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="Embedder of the space to read (names as for 'fs ingest'). Default: the store's only space when it has "
    "one, else minilm.",
)
CleanOpt = typer.Option(
    None,
    "--clean",
    help="Cleaning recipe: raw-v1, basic-v1 or tweet-v1 (default: raw-v1 for minilm, tweet-v1 for ELMo).",
)


def _fs(store: Path | None) -> FeatureStore:
    from featurestore.api import FeatureStore

    return FeatureStore(store)


def _duration(seconds: float) -> str:
    """``12 s``, ``4 min 10 s``, ``1 h 5 min``: how long a long job will take, in words."""
    s = round(seconds)
    if s < 1:
        return "under a second"
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@contextlib.contextmanager
def _progress(description: str, unit: str) -> Iterator[Callable[[float, int], None]]:
    """A rich progress bar with rate and ETA; the library calls ``advance(n, total)`` (``n`` may be a fraction)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Count(ProgressColumn):
        """``done/total unit``, rounded: fractional advances (a fold of a candidate) add up to whole ones."""

        def render(self, task: Task) -> Text:
            done = f"{round(task.completed):,}"
            return Text(f"{done}/{round(task.total):,} {unit}" if task.total is not None else f"{done} {unit}")

    console = Console(stderr=True)
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        Count(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None, rate="")

        def advance(n: float, total: int) -> None:
            bar.update(task, total=total, advance=n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")

        yield advance


DtypeOpt = typer.Option(
    None,
    "--dtype",
    help="Stored precision of the space to read (float32 or float16), when a model has been ingested in both.",
)


@app.command()
@handle_errors
def ingest(
    files: list[str] = typer.Argument(
        ...,
        metavar="FILE",
        help="CSV/TSV (any of , ; tab | separators), JSON Lines "
        "or JSON array, Parquet, or text (one tweet a line); gzip/bz2/xz/zstd compressed "
        "or not; '-' reads stdin. Several files are ingested one after another; with "
        "--engine ray also globs ('data/*.csv') and directories.",
    ),
    dataset: str = typer.Option("train", "--dataset", "-d", help="Dataset to add the rows to."),
    text_col: str | None = typer.Option(None, help="Text column (default: tweet, text, content, ... any case)."),
    id_col: str | None = typer.Option(
        None,
        help="Id column, kept as text (default: id, tweet_id, ... any case; else the row number). '' numbers rows.",
    ),
    label_col: str | None = typer.Option(
        None,
        help="Label column, any strings or integers (default: label, "
        "sentiment, target, class, ... any case). '' ignores labels.",
    ),
    fmt: str | None = typer.Option(
        None, "--format", help="csv, tsv, jsonl, json, parquet or txt (default: from the extension and the content)."
    ),
    sep: str | None = typer.Option(None, "--sep", help="CSV separator (default: sniffed among , ; tab |)."),
    no_header: bool = typer.Option(False, "--no-header", help="The CSV has no header row: columns are 1, 2, 3..."),
    encoding: str | None = typer.Option(None, help="Text encoding (default: UTF-8, UTF-16 by BOM)."),
    quote: str | None = typer.Option(
        None, "--quote", help="CSV quote character (default: \"); '' reads quotes as text (a tweet a field, unquoted)."
    ),
    escape: str | None = typer.Option(
        None, "--escape", help="Character that escapes a quote inside a CSV field, e.g. '\\' (default: none)."
    ),
    duplicates: str = typer.Option(
        "error",
        "--duplicates",
        help="One id twice in the file with different text or "
        "label: error, first (keep the first) or last (keep the last).",
    ),
    model: str = ModelOpt,
    clean: str | None = CleanOpt,
    dtype: str = typer.Option("float32", help="Stored vector precision: float32 or float16."),
    max_chars: int | None = typer.Option(
        None, help="Cut cleaned texts longer than this before embedding (default: 2000)."
    ),
    batch_rows: int | None = typer.Option(
        None,
        help="Rows per committed batch (with --engine ray: texts per vector "
        "segment). Default: 1024, up to 16384 after the first 65536 rows while a fast model commits "
        "a batch in under 0.5 s; on a GPU the model's batch (4096 for minilm).",
    ),
    engine: str = typer.Option(
        "local",
        help="local (this process) or ray (Ray Data: many files, many workers, "
        "one store; pip install 'featurestore[ray]').",
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster to join, e.g. 127.0.0.1:6379 (default: start a local one). With --engine ray."
    ),
    workers: int | None = typer.Option(
        None,
        help="Embedding actors (one model load each) (default: the "
        "cluster's CPUs, or GPUs / --gpus-per-worker). With --engine ray.",
    ),
    gpus_per_worker: float = typer.Option(
        0.0, help="GPUs per embedding actor (e.g. 1, or 0.5 to share). With --engine ray."
    ),
    wait: bool = typer.Option(False, "--wait", help="If another process is writing, wait for it instead of failing."),
    store: Path | None = StoreOpt,
) -> None:
    """Add tweets to a dataset; embed only the texts the store does not have yet; update changed labels."""
    from featurestore.errors import IngestInterrupted

    fs = _fs(store)
    ray_options: dict[str, Any] = {
        "engine": engine,
        "address": address,
        "workers": workers,
        "gpus_per_worker": gpus_per_worker,
    }
    options: dict[str, Any] = dict(
        text_col=text_col,
        id_col=id_col,
        label_col=label_col,
        fmt=fmt,
        encoding=encoding,
        sep=sep,
        quote=quote,
        escape=escape,
        header=not no_header,
        duplicates=duplicates,
        dtype=dtype,
        commit_rows=batch_rows,
        max_chars=max_chars,
        wait=wait,
        **ray_options,
    )
    if engine != "ray":  # Ray reads globs and folders; the local engine reads files, all checked before the first
        _check_inputs(files)
    # The local engine reads one file per call; Ray Data reads them all in one ingest.
    calls = [files] if engine == "ray" else [[f] for f in files]
    for call in calls:
        what = call[0] if len(call) == 1 else f"{len(call)} inputs"
        try:
            with _progress(f"ingest {dataset}" + (f" ({what})" if len(calls) > 1 else ""), "tweets") as advance:
                s = fs.ingest(call[0] if engine != "ray" else call, dataset, model, clean, progress=advance, **options)
        except IngestInterrupted as exc:
            _print_summary(exc.summary, err=True)
            raise
        if len(calls) > 1:
            typer.echo(f"== {what}")
        _print_summary(s)


def _check_inputs(files: list[str]) -> None:
    """Every input exists and is readable before anything is written: a mistake in the third file must not
    leave the first two committed (``fs ingest -- a.csv --dataset t`` read ``--dataset`` as a file)."""
    import os

    if files.count("-") > 1:
        raise FeatureStoreError("'-' (stdin) is given more than once; fix: give '-' once")
    for f in files:
        if f == "-":
            continue
        looks = " (it looks like an option: put options before '--')" if f.startswith("-") else ""
        if not os.path.exists(f):
            raise FeatureStoreError(f"input file {f} does not exist{looks}; fix: check the path; nothing was ingested")
        if os.path.isdir(f):
            raise FeatureStoreError(
                f"input {f} is a directory; fix: give its files (or --engine ray reads folders); nothing was ingested"
            )
        if not os.access(f, os.R_OK):
            raise FeatureStoreError(f"input file {f} is not readable; fix: check its permissions; nothing was ingested")


def _print_summary(s: Any, err: bool = False) -> None:
    cols = s.columns
    fed = "  ".join(
        [
            f"ids: column {cols['id']!r}" if cols.get("id") else "ids: row numbers",
            f"labels: column {cols['label']!r}" if cols.get("label") else "no labels",
            f"text: column {cols['text']!r}" if cols.get("text") else "",
        ]
    ).strip()
    lines = [
        f"dataset {s.dataset}  model {s.model}  recipe {s.recipe}  space {s.space}",
        (f"read {s.source_format}  " if s.source_format else "") + fed,
        f"rows read {s.rows_read:,}  new ids {s.new_ids:,}  duplicates {s.duplicates:,}  "
        f"labels added {s.labels_added:,}  changed {s.labels_changed:,}",
        f"cache hits {s.cache_hits:,}  texts embedded {s.embedded:,}  empty after cleaning {s.empty_after_cleaning:,}"
        + (f"  truncated {s.truncated:,}" if s.truncated else "")
        + (f"  characters replaced {s.replaced_chars:,}" if s.replaced_chars else ""),
        f"batches committed {s.batches_committed}  {s.seconds:.1f} s  ({s.texts_per_second:,.0f} rows/s)"
        + (f"  device {s.device}" if s.embedded else "")
        + ("  [" + ", ".join(f"{k} {v:.1f} s" for k, v in s.timings.items()) + "]" if s.timings else ""),
    ]
    for line in lines:
        typer.echo(line, err=err)
    for note in s.notes:  # what reading the file changed or chose: never silently
        typer.echo(f"note: {note}", err=True)


@app.command()
@handle_errors
def train(
    dataset: str = typer.Option("train", "--dataset", "-d", help="Labelled dataset to train on."),
    model: str = ModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    classifier: str = typer.Option("logreg", help="logreg (in memory) or sgd (out of core, chunked reads)."),
    positive: str | None = typer.Option(
        None,
        help="Positive class for binary F1 (default: 1, pos, positive, "
        "true or yes if present, else the last label in sorted order).",
    ),
    test_size: float = typer.Option(0.2, help="Held-out fraction for validation."),
    seed: int = typer.Option(42, help="random_state of the split and the classifier."),
    name: str | None = typer.Option(
        None, help="Name to save the classifier under (default: DATASET-MODEL-CLASSIFIER)."
    ),
    features: str | None = typer.Option(
        None,
        "--features",
        "-f",
        help="Feature spec: stored spaces and text features joined by '+', e.g. minilm+tfidf-char; "
        "tfidf-word and tfidf-char read the stored text cleaned by basic-v1 (tfidf-char@raw-v1 picks a recipe); "
        "alternatives for the search separated by ','. Fitted on the training split only; saved with the classifier.",
    ),
    search: str | None = typer.Option(
        None,
        help="Choose C, class weight, class offsets, n-gram ranges and features by stratified K-fold CV on the "
        "training split only: none, quick (about a minute on 12k tweets) or full (up to 10 minutes) (default: none; "
        "with neither --features nor --search the plain vectors of --model are used).",
    ),
    folds: int = typer.Option(5, help="Cross-validation folds (with --features/--search)."),
    time_limit: float | None = typer.Option(
        None, help="Seconds after which the search starts no new candidates (default: 90 quick, 540 full)."
    ),
    no_plots: bool = typer.Option(
        False, "--no-plots", help="Do not write the confusion matrix and precision-recall PNGs beside the classifier."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    store: Path | None = StoreOpt,
) -> None:
    """Fit a classifier on stored vectors (and text features) and report F1, precision, recall and accuracy
    (macro for 3+ classes); with --features/--search, also the cross-validated score of the chosen setting."""
    from featurestore.learning.train import result_dict

    fs = _fs(store)
    searching = features is not None or search is not None
    with _progress("CV search", "settings") if searching else contextlib.nullcontext() as advance:
        r = fs.train(
            dataset,
            model,
            clean,
            classifier,
            test_size,
            seed,
            name,
            dtype=dtype,
            positive=positive,
            features=features,
            search=search,
            folds=folds,
            time_limit=time_limit,
            plots=not no_plots,
            progress=advance,
        )
    if as_json:
        typer.echo(json.dumps(result_dict(r), indent=1, ensure_ascii=False))
        return
    for note in r.notes:
        typer.echo(f"note: {note}", err=True)
    for w in r.warnings:
        typer.echo(f"warning: {w}", err=True)
    what = f"features {r.features}" if r.features else f"{r.model}, {r.recipe}"
    typer.echo(
        f"{r.classifier} on {r.dataset} ({what}): {r.n_train:,} train / {r.n_valid:,} validation rows, "
        f"classes {', '.join(map(repr, r.classes))}"
    )
    if r.cv:
        _print_search(r.cv)
    kind = f"positive {r.positive!r}" if r.positive is not None else "macro average"
    typer.echo(
        f"F1 {r.f1:.4f}  precision {r.precision:.4f}  recall {r.recall:.4f}  accuracy {r.accuracy:.4f}  ({kind})"
    )
    if r.positive is None:
        _per_class(r.per_class)
    for p in r.plots:
        typer.echo(f"picture: {p}")
    typer.echo(f"read {r.seconds_read:.2f} s  fit {r.seconds_fit:.2f} s  saved {r.path}")


@app.command()
@handle_errors
def tune(
    dataset: str = typer.Option("train", "--dataset", "-d", help="Labelled dataset to tune on (its training split)."),
    name: str = typer.Option(
        ..., "--name", "-n", help="Name of the tuned model: use it as --model tuned:NAME (letters, digits, . _ -)."
    ),
    model: str = typer.Option("minilm", "--model", "-m", help="Model to start from: minilm."),
    clean: str | None = CleanOpt,
    method: str | None = typer.Option(
        None,
        help="contrastive (SetFit's: the body trained on pairs of labelled tweets) or head (a classification head "
        "trained with the body). Default: the one measured better (docs/training.md).",
    ),
    epochs: float | None = typer.Option(None, help="Passes over the training split (default: 2.5)."),
    test_size: float = typer.Option(0.2, help="Held-out fraction, as 'fs train': these rows are never tuned on."),
    seed: int = typer.Option(42, help="random_state of the split (as 'fs train') and of the tuning."),
    time_limit: float | None = typer.Option(
        None, help="Seconds after which training stops and the model so far is kept (its space says how far it got)."
    ),
    no_embed: bool = typer.Option(
        False, "--no-embed", help="Do not embed the dataset's stored texts with the tuned model afterwards."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    store: Path | None = StoreOpt,
) -> None:
    """Fine-tune the model on a labelled dataset's training split and keep it in the store as tuned:NAME: a new
    vector space for 'fs train', 'fs similar' and 'fs serve'. The validation split of 'fs train' (same --test-size
    and --seed) is never seen."""
    fs = _fs(store)
    with _progress(f"tune {name}", "steps") as advance:
        r = fs.tune(
            dataset,
            name,
            model,
            clean,
            test_size=test_size,
            seed=seed,
            method=method,
            epochs=epochs,
            time_limit=time_limit,
            embed=False,
            progress=advance,
        )
    if not no_embed:  # its own bar: the dataset's stored texts into the tuned space
        with _progress(f"embed {dataset} with {r.model}", "tweets") as advance:
            r.embedded = fs.embed(r.dataset, r.model, r.recipe, progress=advance)
    if as_json:
        out = dataclasses.asdict(r)
        out["embedded"] = dataclasses.asdict(r.embedded) if r.embedded is not None else None
        typer.echo(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        return
    for w in r.warnings:
        typer.echo(f"warning: {w}", err=True)
    if r.reused:
        typer.echo(f"{r.model} was already tuned on these rows with these settings: nothing trained ({r.path})")
    else:
        cut = f"; stopped by the time limit after {r.steps:,} of {r.steps_planned:,} steps" if r.stopped_early else ""
        typer.echo(
            f"tuned {r.model} from {r.base_model} on {r.dataset} ({r.n_train:,} training rows; the {r.n_valid:,} "
            f"validation rows unseen), method {r.method}, {r.steps:,} steps in {_duration(r.seconds)}{cut}; "
            f"loss {r.loss_first:.4f} -> {r.loss_last:.4f}"
        )
        typer.echo(f"saved {r.path} (space {r.space})")
    if r.embedded is not None:
        e = r.embedded
        typer.echo(
            f"embedded dataset {r.dataset} into {r.model}: {e.embedded:,} texts in {e.seconds:.1f} s"
            + (f" ({e.rows_read - e.embedded:,} rows had a vector there already)" if e.rows_read > e.embedded else "")
        )
        typer.echo(f"next: fs train --dataset {r.dataset} --model {r.model}")
    else:
        typer.echo(f"next: fs ingest FILE --dataset {r.dataset} --model {r.model}, then fs train --model {r.model}")


def _print_search(cv: dict[str, Any]) -> None:
    """What the CV search ran and found, in words (the untried settings are in the time limit's note)."""
    total = cv["tried"] + cv["skipped"]
    limit = f"; the {cv['time_limit']:g} s time limit left {cv['skipped']} untried" if cv["skipped"] else ""
    typer.echo(
        f"chosen by {cv['folds']}-fold CV on the training split ({cv['search']} search, {cv['tried']} of {total} "
        f"settings scored in {cv['seconds']:.0f} s{limit}): {cv['chosen']['words']}"
    )
    metric = "F1" if cv["metric"] == "f1" else cv["metric"]
    typer.echo(f"CV {metric} {cv['mean']:.4f} ± {cv['sd']:.4f}   (held-out scores below: validation split, used once)")
    for rank, c in enumerate(cv["top"][1:3], 2):
        typer.echo(f"  {rank}. {c['words']}: CV {metric} {c['cv_mean']:.4f} ± {c['cv_sd']:.4f}")


def _per_class(per_class: dict[str, dict[str, float]]) -> None:
    for c, m in per_class.items():
        typer.echo(
            f"  {c!r:<20} precision {m['precision']:.4f}  recall {m['recall']:.4f}  F1 {m['f1']:.4f}  "
            f"support {m['support']:,}"
        )


ClassifierNameOpt = typer.Option(
    None,
    "--classifier-name",
    help="Saved classifier (see 'fs train'). Default: the one trained most recently in this store (said in a note).",
)


def _write_out(out: Path, data: bytes) -> None:
    """Write an ``--out`` file the one way every command does (``featurestore.storage.atomic.write_output``)."""
    from featurestore.storage.atomic import write_output

    write_output(out, data)


def _said(out: Path) -> bool:
    """Whether a command's summary goes to stderr: stdout carries the output itself (``--out -``)."""
    return str(out) == "-"


@app.command()
@handle_errors
def predict(
    dataset: str = typer.Option("test", "--dataset", "-d", help="Dataset to label."),
    out: Path = typer.Option(
        Path("submission.csv"), "--out", "-o", help="CSV to write (id,label); '-' writes it to stdout."
    ),
    name: str | None = ClassifierNameOpt,
    proba: bool = typer.Option(
        False, "--proba", help="Add one column of predicted probability per class (proba_CLASS)."
    ),
    store: Path | None = StoreOpt,
) -> None:
    """Label every row of a dataset with a trained classifier; write id,label with ids and labels as given."""
    import csv
    import io
    from collections import Counter

    from featurestore.storage.atomic import check_output

    check_output(out)  # a read-only or unwritable --out is refused before any work
    fs = _fs(store)
    choice = fs.classifier(name)
    _say_choice(choice)
    name = choice.name
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if proba:
        ids, labels, p, classes = fs.predict_proba(dataset, name)
        w.writerow(["id", "label"] + [f"proba_{c}" for c in classes])
        w.writerows([i, lab, *(f"{v:.6f}" for v in row)] for i, lab, row in zip(ids.tolist(), labels.tolist(), p))
    else:
        ids, labels = fs.predict(dataset, name)
        w.writerow(["id", "label"])
        w.writerows(zip(ids.tolist(), labels.tolist()))
    _write_out(out, buf.getvalue().encode("utf-8"))
    counts = ", ".join(f"{label}: {n:,}" for label, n in sorted(Counter(labels.tolist()).items()))
    where = "stdout" if _said(out) else out
    typer.echo(f"wrote {len(ids):,} predictions of classifier {name!r} to {where} ({counts or 'none'})", err=_said(out))


def _say_choice(choice: ClassifierChoice) -> None:
    """The note of a classifier chosen for the user (``FeatureStore.classifier``), with how to pick another."""
    if choice.note:
        pick = "; pick another with --classifier-name NAME" if choice.others else ""
        typer.echo(f"note: {choice.note}{pick}", err=True)


@app.command("eval")
@handle_errors
def eval_(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Labelled dataset to score the classifier on."),
    name: str | None = ClassifierNameOpt,
    positive: str | None = typer.Option(None, help="Positive class for binary F1 (default: the classifier's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
    store: Path | None = StoreOpt,
) -> None:
    """Score a saved classifier on any labelled dataset in the store, without retraining."""
    fs = _fs(store)
    choice = fs.classifier(name)
    m = fs.eval(dataset, choice.name, positive)
    if as_json:
        typer.echo(json.dumps({**m, "note": choice.note}, indent=1, ensure_ascii=False))
        return
    _say_choice(choice)
    for w in m["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    kind = f"positive {m['positive']!r}" if m["positive"] is not None else "macro average"
    classes = ", ".join(map(repr, m["classes"]))
    typer.echo(f"classifier {choice.name!r} on {dataset}: {m['n']:,} labelled rows, classes {classes}")
    typer.echo(
        f"F1 {m['f1']:.4f}  precision {m['precision']:.4f}  recall {m['recall']:.4f}  "
        f"accuracy {m['accuracy']:.4f}  ({kind})"
    )
    _per_class(m["per_class"])


@app.command()
@handle_errors
def export(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset to export."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Parquet file to write ('-' writes it to stdout), or the folder for npy files."
    ),
    fmt: str = typer.Option(
        "parquet",
        "--format",
        help="parquet (id, label, text, vector) or npy (a folder: "
        "vectors.npy, ids.npy, labels.npy, texts.npy; loads without pickle).",
    ),
    model: str = ModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    store: Path | None = StoreOpt,
) -> None:
    """Write a dataset's ids, labels, texts and vectors for use outside featurestore."""
    with _progress(f"export {dataset}", "rows") as advance:
        written = _fs(store).export(dataset, out, fmt, model, clean, dtype, progress=advance)
    typer.echo(f"wrote {', '.join('stdout' if _said(p) else str(p) for p in written)}", err=_said(out))


@app.command("map")
@handle_errors
def map_(
    dataset: str = typer.Option("train", "--dataset", "-d", help="Dataset to draw."),
    out: Path = typer.Option(
        Path("map.png"),
        "--out",
        "-o",
        help="map.png (a picture) or map.html (hover a point for its id, label and text; one self-contained file).",
    ),
    model: str = ModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    method: str = typer.Option("auto", help="auto (UMAP when umap-learn is installed, else PCA), umap or pca."),
    max_points: int = typer.Option(5000, help="Draw a random sample of at most this many rows."),
    seed: int = typer.Option(42, help="Seed of the sample and of UMAP."),
    store: Path | None = StoreOpt,
) -> None:
    """Draw a dataset's vector space in 2-D, coloured by label."""
    with _progress(f"map {dataset}", "steps") as advance:  # reading, each UMAP epoch (or the PCA), drawing
        r = _fs(store).map(
            dataset, out, model, clean, dtype, method=method, max_points=max_points, seed=seed, progress=advance
        )
    typer.echo(f"wrote {r.path} ({r.points:,} point{'' if r.points == 1 else 's'}, {r.method})")


SHOWN_CHARS = 200  # a stored text can be megabytes: the table shows its start


@app.command()
@handle_errors
def similar(
    text: str | None = typer.Argument(None, help="Query text (or use --id, or --file)."),
    id: str | None = typer.Option(None, "--id", help="Use the stored tweet with this id as the query."),
    file: Path | None = typer.Option(
        None, "--file", help="Many queries: one text a line ('-' reads stdin); with --json, one JSON object a line."
    ),
    k: int = typer.Option(10, "--k", "-k", help="Number of neighbours."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Only return tweets of this dataset."),
    exact: bool = typer.Option(False, "--exact", help="Brute force over every vector, whatever index is built."),
    nprobe: int | None = typer.Option(
        None,
        "--nprobe",
        help="IVF index: lists scanned a query (more = better recall, slower) (default: from the index manifest).",
    ),
    ef: int | None = typer.Option(
        None,
        "--ef",
        help="HNSW index: candidates a query (more = better recall, slower) (default: from the index manifest).",
    ),
    model: str | None = ReadModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON (full texts)."),
    store: Path | None = StoreOpt,
) -> None:
    """Nearest stored tweets by cosine similarity, through the index ('fs index build'; exact by default)."""
    opts: dict[str, Any] = dict(
        k=k, dataset=dataset, model=model, clean=clean, dtype=dtype, exact=exact, nprobe=nprobe, ef=ef
    )
    if file is not None:
        if text is not None or id is not None:
            raise FeatureStoreError("give queries in --file, or one query text or --id, not both")
        queries = _read_queries(file)
        results = _fs(store).similar(texts=queries, **opts)
        for q, r in zip(queries, results):
            if as_json:
                typer.echo(
                    json.dumps(
                        {"query": q, "resolved": r.query, "hits": [h.__dict__ for h in r.hits]}, ensure_ascii=False
                    )
                )
            else:
                typer.echo(f"# {' '.join(q.split())[:SHOWN_CHARS]}")
                _print_hits(r.hits)
        index, kind = (results[0].index, results[0].index_kind) if results else ("-", "-")
        if results and results[0].note:
            typer.echo(f"note: {results[0].note}", err=True)
        typer.echo(f"({len(queries)} queries; index {index}, {kind})", err=True)
        return
    r = _fs(store).similar(text, id=id, **opts)
    if as_json:
        info = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "hits"}
        info = {k: v for k, v in info.items() if v is not None}  # no note: no "note" key
        typer.echo(json.dumps({"info": info, "hits": [h.__dict__ for h in r.hits]}, indent=1, ensure_ascii=False))
        return
    _print_hits(r.hits)
    if r.note:
        typer.echo(f"note: {r.note}", err=True)
    typer.echo(f"({r.query}; index {r.index}, {r.index_kind})", err=True)


def _read_queries(file: Path) -> list[str]:
    """Non-blank lines of a UTF-8 file (or stdin for '-'), one query each."""
    import sys

    try:
        raw = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FeatureStoreError(
            f"query file {file} does not exist; fix: give a text file with one query a line"
        ) from None
    except UnicodeDecodeError as exc:
        raise FeatureStoreError(f"query file {file} is not UTF-8 text ({exc.reason}); fix: save it as UTF-8") from None
    queries = [line.rstrip("\r") for line in raw.split("\n") if line.strip()]
    if not queries:
        raise FeatureStoreError(f"query file {file} has no queries; fix: one query text a line")
    return queries


def _print_hits(hits: list[Any]) -> None:
    for h in hits:
        ids = ", ".join(f"{d}:{i}" for d, i in h.ids[:3]) + (f" (+{len(h.ids) - 3})" if len(h.ids) > 3 else "")
        one_line = " ".join(h.text[: SHOWN_CHARS * 4].split())
        shown = one_line if len(one_line) <= SHOWN_CHARS else one_line[:SHOWN_CHARS] + f"… ({len(h.text):,} chars)"
        typer.echo(f"{h.rank:>3}  {h.score:.4f}  {ids}  {shown}")


index_app = typer.Typer(
    help="The search index of a vector space: build it as flat, IVF, HNSW or IVF-PQ.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


@index_app.command("build")
@handle_errors
def index_build(
    kind: str = typer.Option(
        "auto",
        "--kind",
        help="auto (exact below 200k vectors, IVF above), flat (exact), "
        "ivf (IVF{nlist},Flat), hnsw (HNSW{m}) or ivfpq (IVF{nlist},PQ{m},Refine(SQ8)).",
    ),
    nlist: int | None = typer.Option(None, "--nlist", help="IVF lists (default: about 4 x sqrt(vectors))."),
    m: int | None = typer.Option(
        None,
        "--m",
        help="HNSW links a node [default 32]; IVF-PQ sub-quantizers (a divisor of the dimension) [default 48].",
    ),
    model: str | None = ReadModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    store: Path | None = StoreOpt,
) -> None:
    """Build (or rebuild) the index that 'fs similar' uses; later ingests extend or rebuild it as that kind."""
    with _progress("index", "vectors") as advance:
        out = _fs(store).index_build(kind, nlist=nlist, m=m, model=model, clean=clean, dtype=dtype, progress=advance)
    if "note" in out:
        typer.echo(f"note: {out['note']}", err=True)
    typer.echo(
        f"built {out['kind']} index {out['factory']!r} of space {out['space']}: {out['vectors']:,} vectors, "
        f"{out['bytes'] / 1e6:,.1f} MB, {out['seconds']:.1f} s"
    )


@app.command()
@handle_errors
def info(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    store: Path | None = StoreOpt,
) -> None:
    """Datasets, vector spaces, counts, coverage and sizes."""
    data = _fs(store).info()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    typer.echo(f"store {data['path']}  generation {data['generation']}  {data['bytes'] / 1e6:,.1f} MB")
    typer.echo("datasets:" if data["datasets"] else "datasets: none (run 'fs ingest FILE --dataset NAME')")
    for d in data["datasets"]:
        classes = ", ".join(map(str, d["classes"])) or "-"
        typer.echo(
            f"  {d['name']:<16} {d['rows']:>9,} rows  {d['labelled']:>9,} labelled ({classes})  "
            f"{d['bytes'] / 1e6:8.1f} MB  keyed: " + (", ".join(f"{r} {n:,}" for r, n in d["recipes"].items()) or "-")
        )
    typer.echo("spaces:" if data["spaces"] else "spaces: none")
    for s in data["spaces"]:
        cover = ", ".join(f"{d} {n:,}" for d, n in s["coverage"].items())
        typer.echo(
            f"  {s['id']}  {s['model']} ({s['recipe']}, {s['dim']}-d {s['dtype']})  {s['vectors']:,} vectors  "
            f"{s['bytes'] / 1e6:.1f} MB  coverage: {cover}"
            + (
                f"  cache entries (no row owns them; never search hits): {s['cache_entries']:,}"
                if s["cache_entries"]
                else ""
            )
        )
    for t in data["tuned_models"]:
        cut = " (stopped by its time limit)" if t["stopped_early"] else ""
        typer.echo(
            f"tuned model {t['model']}: {t['method']} on dataset {t['dataset']!r} ({t['n_train']:,} training rows; "
            f"split --test-size {t['test_size']:g} --seed {t['seed']}), {t['steps']:,} steps{cut}, {t['created_at']}"
        )


@app.command()
@handle_errors
def check(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Seconds at any size: the manifest, every segment's header, the index identity, and whole segments "
        "chosen at random; says what it did not verify.",
    ),
    store: Path | None = StoreOpt,
) -> None:
    """Verify the store: schema, counts, unique keys, finite vectors, dims, resolvable keys, index."""
    with contextlib.ExitStack() as stack:
        bar: list[Callable[[float, int], None]] = []

        def planned(p: Any) -> None:  # said before anything is read; then the bar, in MB, with its rate and ETA
            took = _duration(p.seconds) if p.seconds < 1 else f"about {_duration(p.seconds)}"
            about = f"{took} at {p.read_rate / 1e6:,.0f} MB/s (read rate measured now)"
            typer.echo(
                f"check{' --quick' if p.quick else ''}: reading {p.bytes / 1e9:,.2f} GB in {p.files:,} files, "
                + (about if p.bytes else "nothing to read"),
                err=True,
            )
            bar.append(stack.enter_context(_progress("check", "MB")))

        def advance(n: float, total: int) -> None:
            if bar:
                bar[0](n / 1e6, total / 1e6)  # type: ignore[arg-type]  # MB, as a float

        r = _fs(store).check(progress=advance, quick=quick, plan=planned)
    for w in r.warnings:
        typer.echo(f"warning: {w}")
    for e in r.errors:
        typer.echo(f"error: {e}")
    for n in r.not_verified:
        typer.echo(f"not verified (--quick): {n}")
    if not r.ok:
        typer.echo(f"{len(r.errors)} problem(s); fix: run 'fs repair' (it never drops a readable committed vector)")
        raise typer.Exit(1)
    typer.echo("ok: " + "  ".join(f"{k} {v:,}" for k, v in r.stats.items()))


@app.command()
@handle_errors
def repair(store: Path | None = StoreOpt) -> None:
    """Remove torn or orphaned files, roll back a corrupt manifest, drop stale indexes."""
    r = _fs(store).repair()
    for a in r.actions or ["nothing to repair"]:
        typer.echo(a)
    for w in r.warnings:
        typer.echo(f"warning: {w}", err=True)
    for e in r.errors:
        typer.echo(f"error: {e}")
    if r.errors:
        raise typer.Exit(1)
    typer.echo("store is consistent")


@app.command()
@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 (every interface) only when given here."),
    port: int = typer.Option(8080, help="TCP port."),
    token: str | None = typer.Option(
        None, envvar="FS_TOKEN", help="Require 'Authorization: Bearer TOKEN' on every API request (or FS_TOKEN)."
    ),
    threads: int | None = typer.Option(
        None,
        min=1,
        help="Requests answered at once (default: the cores this "
        "process may use; more threads only contend for Python's lock).",
    ),
    search_threads: int | None = typer.Option(
        None,
        min=1,
        help="Threads one search may use inside FAISS, "
        "BLAS and torch (default: 1 for an approximate index, whose requests "
        "already run in parallel; the cores for an exact one, whose scan "
        "wants them).",
    ),
    workers: int = typer.Option(
        1,
        min=1,
        help="Server processes sharing the port, each with its own caches and "
        "Python lock: 2 on 2 cores answered ~1.6x the requests of 1 at a million vectors, "
        "for ~0.8 GB more memory.",
    ),
    model: str | None = ReadModelOpt,
    clean: str | None = CleanOpt,
    dtype: str | None = DtypeOpt,
    store: Path | None = StoreOpt,
) -> None:
    """Serve the store read-only over HTTP: /similar, /vectors, /datasets, /health, a search page, /docs."""
    try:
        from featurestore.serving import serve as serving
    except ImportError as exc:
        raise FeatureStoreError(
            f"fs serve needs FastAPI and uvicorn ({exc}); fix: pip install 'featurestore[serve]'"
        ) from None
    if not serving.is_loopback(host) and not token:
        typer.echo(
            f"warning: serving on {host} without --token: anyone who can reach this port can read the store", err=True
        )
    settings = serving.Settings(
        store=str(store) if store else None,
        **({"model": model} if model is not None else {}),  # else the server's default (serving.Settings)
        clean=clean,
        dtype=dtype,
        token=token,
        threads=threads,
        search_threads=search_threads,
    )
    serving.run(
        settings,
        host=host,
        port=port,
        workers=workers,
        ready=lambda url: typer.echo(
            f"serving {settings.store or 'store'} read-only at {url} (docs: {url}docs); Ctrl-C stops", err=True
        ),
    )


@app.command()
@handle_errors
def gc(
    keep: int = typer.Option(1, "--keep", help="Manifest generations to keep (readers can open these)."),
    store: Path | None = StoreOpt,
) -> None:
    """Free disk: delete segments that compaction superseded and older manifest generations.

    Ingests keep the last 3 generations (and the segments they name) so that a query running during
    an ingest can finish; run this when no query is reading an older generation."""
    r = _fs(store).gc(keep)
    for name in r.left:
        typer.echo(f"warning: {name} is not a file featurestore writes: not ours, left in place", err=True)
    typer.echo(
        f"removed {r.removed:,} file(s), freed {r.freed / 1e6:,.1f} MB; kept generation(s) "
        f"{', '.join(map(str, r.generations))}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
