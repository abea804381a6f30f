"""Fine-tuning a sentence-transformers model (MiniLM) on labelled texts: the engine behind ``fs tune``.

Two methods, both run by sentence-transformers' own trainer (``SentenceTransformerTrainer``):

- ``head``: a linear head on the pooled, normalised embedding and cross-entropy over the labels, trained with
  the body; only the body is saved (a head is a classifier, and ``fs train`` fits its own).
- ``contrastive``: SetFit's body training: pairs of texts drawn from the labels (same label -> cosine 1,
  different -> 0) under ``CosineSimilarityLoss``; a classifier is fitted on the tuned vectors afterwards.

The saved folder has the base's layout (Transformer, mean Pooling, Normalize; float32 ``model.safetensors``;
the tokenizer) and the base's ``max_seq_length``, so ``MiniLMEmbedder(model_dir=...)``, the ONNX embedders and
``SentenceTransformer(...).encode`` read it alike. On a CPU a run is deterministic: the seed fixes the head,
dropout and the data order; there are no dataloader workers. Nothing is printed or written outside
``out_dir``: the trainer's output folder is a temporary one, removed after, and no checkpoint is saved.
torch, sentence-transformers and datasets are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featurestore.errors import UsageError
from featurestore.machine import usable_cores
from featurestore.progress import ProgressFn

METHODS = ("contrastive", "head")
#: bump when the training arithmetic changes (pair drawing, loss, schedule, what is saved): it names the weights
TUNE_VERSION = "tune-v1"


@dataclass(frozen=True)
class TuneParams:
    """Everything that changes the tuned weights (besides the base model, the rows and ``TUNE_VERSION``).

    ``epochs`` counts passes over the texts (``contrastive``: one pass draws one pair a text). ``max_seq_length``
    is the word-piece cut while training only; the saved model keeps the base's.
    """

    # Measured (bench/tune.py, 6,336 tutorial rows, 2 shared cores, 1 torch thread): head 2.5 epochs 555 s, F1 0.869;
    # contrastive 1.2 epochs 679 s, F1 0.866; head 1.3 epochs 403 s, F1 0.865; base 0.803.
    method: str = "head"
    epochs: float = 2.5
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_seq_length: int = 64
    seed: int = 42
    warmup_ratio: float = 0.1
    #: the head's learning rate (``head`` only): a fresh layer learns faster than the pretrained body
    head_learning_rate: float = 1e-3
    #: keep the word-piece embedding table (half of MiniLM's weights) as it is: AdamW's update of 11.7 M rows
    #: that a batch mostly does not use costs time, and rare words keep their general meaning
    freeze_word_embeddings: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values, for the fingerprint of a tuned model."""
        return asdict(self)

    def check(self) -> None:
        """Raise ``UsageError`` for a value that cannot train, with the fix."""
        if self.method not in METHODS:
            raise UsageError(
                f"unknown tuning method {self.method!r} for {{param}}; fix: use one of {', '.join(METHODS)}", "method"
            )
        for name, value in (
            ("epochs", self.epochs),
            ("learning_rate", self.learning_rate),
            ("head_learning_rate", self.head_learning_rate),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                default = getattr(TuneParams(), name)
                raise UsageError(f"{{param}} must be a positive number, not {value!r}; fix: e.g. {default}", name)
        for name, value, low in (("batch_size", self.batch_size, 2), ("max_seq_length", self.max_seq_length, 8)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                default = getattr(TuneParams(), name)
                raise UsageError(f"{{param}} must be an integer >= {low}, not {value!r}; fix: e.g. {default}", name)
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"{{param}} must be in [0, 1), not {self.warmup_ratio!r}; fix: e.g. 0.1", "warmup_ratio")


@dataclass
class TuneReport:
    """What a run did: steps (of ``steps_planned``), seconds from the call to the saved model, the loss."""

    method: str
    steps: int
    steps_planned: int
    seconds: float
    stopped_early: bool  # by the time limit
    loss_first: float
    loss_last: float  # the mean of the last 10 steps' losses (one step's is noisy)
    examples: int  # texts (head) or pairs (contrastive) trained on per epoch
    classes: list[str] = field(default_factory=list)


def fine_tune(
    base_dir: Path,
    texts: Sequence[str],
    labels: Sequence[str],
    out_dir: Path,
    params: TuneParams,
    *,
    time_limit: float | None = None,
    progress: ProgressFn | None = None,
    threads: int | None = None,
) -> TuneReport:
    """Tune the sentence-transformers model in ``base_dir`` on ``texts`` and their ``labels``; save it in ``out_dir``.

    ``out_dir`` must exist and be empty. ``progress(1, steps_planned)`` is called after each training step.
    After ``time_limit`` seconds (from this call) training stops at the end of the step under way and the
    model so far is saved (``stopped_early``). ``threads``: torch's CPU threads while training (default:
    the cores this process may use); on a CPU shared with other busy processes one thread ran 3x faster
    than two (bench/tune.py), as torch's threads wait on each other.
    """
    start = time.monotonic()
    params.check()
    classes = _check_rows(texts, labels, params)
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise UsageError(
            f"{{param}} {str(out_dir)!r} must be an existing, empty folder; fix: give a new empty one", "out_dir"
        )
    if time_limit is not None and not time_limit > 0:
        raise UsageError(
            f"{{param}} must be a positive number of seconds, not {time_limit!r}; fix: e.g. 900, or none", "time_limit"
        )

    import torch

    with (
        _quiet(),
        _torch_state(params.seed, threads or usable_cores()),
        tempfile.TemporaryDirectory(prefix="fs-tune-") as scratch,
    ):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(base_dir), device=_device(), local_files_only=True)
        saved_length = model.max_seq_length
        model.max_seq_length = params.max_seq_length
        rng = np.random.default_rng(params.seed)
        if params.method == "head":
            dataset = _texts_dataset(texts, labels, classes)
            torch.manual_seed(params.seed)  # the head's initial weights
            loss: Any = _head_loss(model, len(classes))
        else:
            dataset = _pairs_dataset(texts, labels, rng)
            from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

            loss = CosineSimilarityLoss(model)
        if params.freeze_word_embeddings:
            model[0].auto_model.get_input_embeddings().weight.requires_grad_(False)
        lengths = _lengths(model, dataset, params.max_seq_length)
        recorder = _Recorder(start, time_limit, progress)
        trainer = _trainer(model, dataset, loss, params, Path(scratch), recorder, lengths)
        trainer.train()
        model.max_seq_length = saved_length
        model.eval()
        model.save(str(out_dir), create_model_card=False)
    losses = recorder.losses or [float("nan")]
    return TuneReport(
        method=params.method,
        steps=recorder.steps,
        steps_planned=recorder.planned,
        seconds=time.monotonic() - start,
        stopped_early=recorder.stopped_early,
        loss_first=losses[0],
        loss_last=float(np.mean(losses[-10:])),
        examples=len(dataset),
        classes=classes,
    )


def _check_rows(texts: Sequence[str], labels: Sequence[str], params: TuneParams) -> list[str]:
    """The sorted classes; ``LabelError`` for rows that cannot train the method."""
    if len(texts) != len(labels):
        raise UsageError(
            f"{len(texts)} texts but {len(labels)} labels for {{param}}; fix: give one label a text", "labels"
        )
    counts = Counter(str(label) for label in labels)
    if len(counts) < 2:
        found = ", ".join(repr(c) for c in counts) or "none"
        raise UsageError(
            f"tuning needs at least 2 classes in {{param}}, found {found}; fix: label rows of another class too",
            "labels",
        )
    if params.method == "contrastive":
        single = sorted(c for c, n in counts.items() if n < 2)
        if single:
            raise UsageError(
                "contrastive tuning pairs each text with another of its class, and class(es) "
                f"{', '.join(map(repr, single))} of {{param}} have one row; "
                "fix: label more rows of them, or use method='head'",
                "labels",
            )
    return sorted(counts)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _texts_dataset(texts: Sequence[str], labels: Sequence[str], classes: list[str]) -> Any:
    from datasets import Dataset

    index = {c: i for i, c in enumerate(classes)}
    return Dataset.from_dict({"text": [str(t) for t in texts], "label": [index[str(label)] for label in labels]})


def _pairs_dataset(texts: Sequence[str], labels: Sequence[str], rng: np.random.Generator) -> Any:
    """SetFit's pairs: each text is the first of one pair, its partner of the same class (score 1) or of
    another (score 0), half of each, drawn by ``rng``."""
    from datasets import Dataset

    names = np.array([str(label) for label in labels])
    by_class = {c: np.flatnonzero(names == c) for c in np.unique(names)}
    others = {c: np.flatnonzero(names != c) for c in by_class}
    n = len(names)
    texts = [str(t) for t in texts]
    positive = rng.permutation(np.arange(n) % 2 == 0)
    partners = np.empty(n, dtype=np.int64)
    for i in range(n):
        pool = by_class[names[i]] if positive[i] else others[names[i]]
        j = i
        while j == i:  # a positive partner is another text (each class has two or more)
            j = int(pool[rng.integers(len(pool))])
        partners[i] = j
    return Dataset.from_dict(
        {
            "sentence1": texts,
            "sentence2": [texts[j] for j in partners],
            "label": positive.astype(np.float32).tolist(),
        }
    )


def _head_loss(model: Any, n_classes: int) -> Any:
    """Cross-entropy of a linear head over the model's sentence embedding (the head trains with the body)."""
    import torch

    class HeadLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.head = torch.nn.Linear(model.get_embedding_dimension(), n_classes)

        def forward(self, features: Any, labels: Any) -> Any:
            embedding = self.model(features[0])["sentence_embedding"]
            return torch.nn.functional.cross_entropy(self.head(embedding), labels)

    return HeadLoss()


class _Recorder:
    """A trainer callback's state: progress, each step's loss, the time limit."""

    def __init__(self, start: float, time_limit: float | None, progress: ProgressFn | None) -> None:
        self.start, self.time_limit, self.progress = start, time_limit, progress
        self.steps = self.planned = 0
        self.stopped_early = False
        self.losses: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                recorder.planned = int(state.max_steps)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    recorder.losses.append(float(logs["loss"]))

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                recorder.steps = int(state.global_step)
                if recorder.progress is not None:
                    recorder.progress(1, recorder.planned)
                limit = recorder.time_limit
                if (
                    limit is not None
                    and time.monotonic() - recorder.start >= limit
                    and state.global_step < recorder.planned
                ):
                    recorder.stopped_early = True
                    control.should_training_stop = True

        return Callback()


def _lengths(model: Any, dataset: Any, cut: int) -> np.ndarray:
    """Each example's word pieces (a pair's: both texts'), each text cut at ``cut``: the batches' sort key."""
    columns = [c for c in dataset.column_names if c != "label"]
    tokenizer = model.tokenizer
    total = np.zeros(len(dataset), dtype=np.int64)
    for column in columns:
        ids = tokenizer(list(dataset[column]), add_special_tokens=True, truncation=False)["input_ids"]
        total += np.minimum([len(i) for i in ids], cut)
    return total


def length_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: the examples in a random order (from ``seed`` and ``epoch``), cut in groups of
    50 batches, each group sorted by length and cut in batches, the batches in a random order.

    A batch is padded to its longest text; tweets run 25-110 word pieces (median 45), so random batches
    pay for ~64 a text and sorted ones for ~45 (the group keeps the batches' content random)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group = batch_size * 50
    batches: list[list[int]] = []
    for begin in range(0, len(order), group):
        chunk = order[begin : begin + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _trainer(
    model: Any, dataset: Any, loss: Any, params: TuneParams, scratch: Path, recorder: _Recorder, lengths: np.ndarray
) -> Any:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from torch.utils.data import BatchSampler
    from transformers import PrinterCallback, ProgressCallback

    class LengthBatchSampler(BatchSampler):
        """``length_batches`` for the trainer, which calls ``set_epoch`` at each epoch."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.epoch = 0
            self.batch_size = params.batch_size
            self.drop_last = False

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return math.ceil(len(lengths) / params.batch_size)

        def __iter__(self) -> Iterator[list[int]]:
            return iter(length_batches(lengths, params.batch_size, params.seed, self.epoch))

    steps = math.ceil(params.epochs * math.ceil(len(dataset) / params.batch_size))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch),
        num_train_epochs=params.epochs,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        learning_rate_mapping={r"^head\.": params.head_learning_rate} if params.method == "head" else {},
        warmup_steps=int(params.warmup_ratio * steps),
        lr_scheduler_type="linear",
        weight_decay=0.0,
        seed=params.seed,
        data_seed=params.seed,
        dataloader_num_workers=0,
        batch_sampler=LengthBatchSampler,
        logging_strategy="steps",
        logging_steps=1,  # each step's loss, for the report
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=_device() == "cpu",
    )

    class Trainer(SentenceTransformerTrainer):
        def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
            pass  # no model card: it samples the data (with tqdm bars) for a README we do not save

    trainer = Trainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[recorder.callback()])
    for quiet in (PrinterCallback, ProgressCallback):  # they print the logs and draw bars
        trainer.remove_callback(quiet)
    return trainer


@contextlib.contextmanager
def _torch_state(seed: int, threads: int) -> Iterator[None]:
    """Seeds set, torch's ``threads``, deterministic algorithms on; as the caller had them after."""
    import random

    import torch

    before = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers', datasets' and sentence-transformers' warnings and progress bars off inside the block."""
    import logging

    from datasets.utils import logging as ds_logging

    from featurestore.embedders.minilm import _quiet_transformers

    ds_bars = ds_logging.is_progress_bar_enabled()
    st_logger = logging.getLogger("sentence_transformers")
    st_level = st_logger.level
    ds_logging.disable_progress_bar()
    st_logger.setLevel(logging.ERROR)
    try:
        with _quiet_transformers():
            yield
    finally:
        if ds_bars:
            ds_logging.enable_progress_bar()
        st_logger.setLevel(st_level)


__all__ = ["METHODS", "TUNE_VERSION", "TuneParams", "TuneReport", "fine_tune"]
