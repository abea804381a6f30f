"""Pictures: a classifier's confusion matrix and precision-recall curve, and a dataset's map in 2-D.

matplotlib is used through ``Figure`` and the Agg canvas directly (no pyplot, no global backend
switch), and is imported by this module only; importing it fails with ImportError when the
``plots`` extra is not installed, which callers turn into a note. The HTML map is written by
hand: one self-contained file (inline SVG, a ``<title>`` per point for the hover text), no
JavaScript library.
"""

from __future__ import annotations

import functools
import html
import io
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from featurestore.progress import ProgressFn
from featurestore.storage.atomic import atomic_write_bytes, write_output

F = TypeVar("F", bound=Callable[..., Any])


def _quiet(func: F) -> F:
    """Run ``func`` with matplotlib's, scikit-learn's and numpy's warnings silenced: a glyph a font lacks,
    a zero-variance projection, tight_layout's give-up are about the picture, never the user's data, and
    would otherwise be printed with their source lines under a command's output."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _save(fig: Figure, path: Path, user_named: bool = False) -> Path:
    """Save a PNG: beside a classifier (the store's own file, atomically), or to a path the user named
    (``--out``: a FIFO or a device is written as a stream, a read-only file refused; ``write_output``)."""
    import io

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    if user_named:
        write_output(path, buf.getvalue())
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


@_quiet
def confusion_png(path: Path, y: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str) -> Path:
    """Counts of true (rows) against predicted (columns) classes, each cell also as a share of its row."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(classes))
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = Figure(figsize=(2.2 + 1.1 * n, 1.8 + 1.0 * n))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{cm[i, j]:,}\n{share[i, j]:.0%}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=10,
            )
    ax.set_xticks(range(n), [str(c)[:16] for c in classes])
    ax.set_yticks(range(n), [str(c)[:16] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix\n{title}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@_quiet
def precision_recall_png(
    path: Path, y: np.ndarray, proba: np.ndarray, classes: Sequence[str], positive: str | None, title: str
) -> Path:
    """Precision against recall as the threshold moves: the positive class for two classes, one curve
    per class (one against the rest) for more; average precision in the legend."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    shown = [positive] if positive is not None else list(classes)
    for k, c in enumerate(shown):
        truth = np.asarray(y) == c
        if not truth.any():
            continue
        score = proba[:, list(classes).index(c)]
        p, r, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        ax.plot(r, p, color=PALETTE[k % len(PALETTE)], label=f"{str(c)[:20]} (AP {ap:.3f}, base {truth.mean():.3f})")
        ax.axhline(truth.mean(), color=PALETTE[k % len(PALETTE)], linestyle=":", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(
        f"precision-recall ({'positive ' + repr(positive) if positive is not None else 'one vs rest'})\n{title}",
        fontsize=9,
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# umap-learn's numba functions that a fit compiles, which umap compiles without numba's on-disk cache: every
# `fs map` paid ~10 s of compilation (a fit of 60 points: 10.9 s, 10.1 of them compiling, on a 2-core machine).
# Cached (beside umap's sources, or in numba's cache directory when those are read-only), a new process loads
# the machine code instead: UMAP's part of a map in a new process 18.9 -> 3.3 s, the TensorFlow import left out
# below included. The layout function is the n_jobs=1 variant only: its parallel twin has the same source and
# line, which numba's cache index does not tell apart.
_UMAP_UNCACHED_JIT = (
    ("umap.utils", "fast_knn_indices"),
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),
)


def _parametric_umap(name: str):  # noqa: ANN202 - umap's module __getattr__ (PEP 562)
    if name in ("ParametricUMAP", "load_ParametricUMAP"):
        import warnings

        with warnings.catch_warnings():  # as umap's own __init__ imports it
            warnings.simplefilter("ignore")
            from umap import parametric_umap  # imports TensorFlow now

        return getattr(parametric_umap, name)
    raise AttributeError(f"module 'umap' has no attribute {name!r}")


def _import_umap():  # noqa: ANN202 - the umap module
    """``import umap`` without TensorFlow, and with its compiled functions cached on disk by numba.

    umap's package import pulls in TensorFlow for ParametricUMAP alone (4-5 s), which a map never uses: while
    umap is imported, ``import tensorflow`` fails (as it would without TensorFlow installed), and
    ``umap.ParametricUMAP`` is then imported when something asks for it. A process that has already imported
    TensorFlow or umap keeps them as they are. (Another thread's first ``import tensorflow`` during those
    seconds would fail: featurestore imports TensorFlow only to load a TF model, never beside a map.)
    """
    import importlib
    import importlib.util
    import sys
    import warnings

    from featurestore.machine import hidden_module

    with hidden_module("tensorflow", hide="umap" not in sys.modules) as hide, warnings.catch_warnings():
        warnings.simplefilter("ignore", ImportWarning)  # "Tensorflow not installed; ParametricUMAP ..."
        import umap  # (optional: the plots extra)
    if (
        hide
        and getattr(umap, "ParametricUMAP", None) is not None
        and umap.ParametricUMAP.__module__ == "umap"
        and importlib.util.find_spec("tensorflow") is not None
    ):
        # umap put a stand-in that says TensorFlow is missing; the process's own code gets the real one on use.
        del umap.ParametricUMAP
        umap.__getattr__ = _parametric_umap
    for module, name in _UMAP_UNCACHED_JIT:
        fn: Any = getattr(importlib.import_module(module), name, None)  # a numba dispatcher, or None
        if getattr(fn, "_cache", None) is not None and type(fn._cache).__name__ == "NullCache":
            try:
                fn.enable_caching()
            except Exception:  # noqa: BLE001 - no writable cache directory: compile as before
                pass
    return umap


class _EpochsDone(io.TextIOBase):
    """Where umap's epoch bar (tqdm) writes: each refresh, formatted as ``<n/total>`` by ``_epoch_progress``,
    becomes a ``progress(epochs advanced, total)`` call. Nothing is printed."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.done = 0

    def write(self, text: str) -> int:
        for m in re.finditer(r"<(\d+)/(\d+)>", text):
            n, total = int(m[1]), int(m[2])
            if n > self.done:
                self.progress(n - self.done, total)
                self.done = n
        return len(text)


def _epoch_progress(progress: ProgressFn | None) -> dict[str, Any]:
    """UMAP arguments that report its layout epochs to ``progress`` through tqdm's documented ``file`` and
    ``bar_format`` (umap's ``tqdm_kwds``); none in a notebook, where tqdm draws a widget instead of writing."""
    from umap import layouts  # imported by _import_umap already

    bar = getattr(layouts, "tqdm", None)
    if progress is None or bar is None or not bar.__module__.startswith(("tqdm.std", "tqdm.asyncio")):
        return {}
    kwds = {"disable": False, "file": _EpochsDone(progress), "bar_format": "<{n}/{total}>", "mininterval": 0.25}
    return {"tqdm_kwds": kwds}


@_quiet
def project(
    X: np.ndarray, method: str = "auto", seed: int = 42, progress: ProgressFn | None = None
) -> tuple[np.ndarray, str]:
    """2-D coordinates of the rows of ``X``: UMAP (cosine) when installed and asked for, else PCA.

    ``progress(advanced, total)`` counts UMAP's layout epochs (the neighbour graph before them is not
    counted), or reports the PCA as one step."""
    if method not in ("auto", "umap", "pca"):
        from featurestore.errors import UsageError

        raise UsageError(f"unknown {{param}} {method!r}; use auto, umap or pca", "method")
    if method in ("auto", "umap") and len(X) > 15:
        try:
            umap = _import_umap()
        except ImportError:
            if method == "umap":
                from featurestore.errors import UsageError

                raise UsageError(
                    "{param} umap needs umap-learn; fix: pip install 'featurestore[plots]'", "method"
                ) from None
        else:
            reducer = umap.UMAP(
                n_components=2, metric="cosine", random_state=seed, n_jobs=1, **_epoch_progress(progress)
            )
            return np.asarray(reducer.fit_transform(X), dtype=np.float64), "UMAP"
    from sklearn.decomposition import PCA

    xy = np.zeros((len(X), 2))  # one row (or one dimension) has fewer than 2 components: drawn on the axis
    k = min(2, len(X), X.shape[1] if X.ndim == 2 else 0)
    if k and len(X) > 1:
        xy[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(X)
    if progress:
        progress(1, 1)
    return xy, "PCA"


def compile_umap() -> bool:
    """Compile the numba code a UMAP map runs, into numba's on-disk caches: in a new install that costs
    ~30 s (importing umap compiles pynndescent's functions, 21 s here; the first fit umap's own, 11 s),
    once, instead of in the first ``fs map``; ``make setup`` runs it. False when umap is not installed."""
    try:
        _import_umap()
    except ImportError:
        return False
    project(np.random.default_rng(0).standard_normal((60, 8)).astype(np.float32), "umap")
    return True


@_quiet
def map_png(path: Path, xy: np.ndarray, labels: np.ndarray, title: str) -> Path:
    fig = Figure(figsize=(8, 7))
    ax = fig.add_subplot()
    for k, c in enumerate(sorted(set(labels.tolist()))):
        m = labels == c
        ax.scatter(
            xy[m, 0],
            xy[m, 1],
            s=5,
            alpha=0.6,
            color=PALETTE[k % len(PALETTE)],
            label=f"{c or '(no label)'} ({int(m.sum()):,})",
        )
    ax.legend(markerscale=3, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path, user_named=True)


@_quiet
def map_html(path: Path, xy: np.ndarray, labels: np.ndarray, hover: Sequence[str], title: str) -> Path:
    """One self-contained HTML file: an SVG scatter, one circle per row, its hover text in a <title>."""
    w, h, pad = 900, 700, 20
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = pad + (xy[:, 0] - lo[0]) / span[0] * (w - 2 * pad)
    py = h - pad - (xy[:, 1] - lo[1]) / span[1] * (h - 2 * pad)
    classes = sorted(set(labels.tolist()))
    colour = {c: PALETTE[k % len(PALETTE)] for k, c in enumerate(classes)}
    circles = [
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour[c]}" fill-opacity="0.65">'
        f"<title>{html.escape(t)}</title></circle>"
        for x, y, c, t in zip(px.tolist(), py.tolist(), labels.tolist(), hover)
    ]
    legend = "".join(
        f'<span style="margin-right:1em"><span style="color:{colour[c]}">&#9679;</span> '
        f"{html.escape(c or '(no label)')} ({int((labels == c).sum()):,})</span>"
        for c in classes
    )
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>' + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;margin:1em}svg{border:1px solid #ccc}"
        "circle:hover{r:6;fill-opacity:1}</style></head><body>"
        f"<h3>{html.escape(title)}</h3><p>{legend}</p><p>Hover a point for its id, label and text.</p>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
        + "".join(circles)
        + "</svg></body></html>\n"
    )
    write_output(path, page.encode("utf-8"))
    return path
