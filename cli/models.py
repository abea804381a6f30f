"""``fs models``: list, download, verify and export ELMo models (``featurestore.embedders.releases``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from cli.common import fail, handle_errors
from featurestore.embedders import releases
from featurestore.embedders.elmo_spec import DEFAULT_ELMO_OUTPUT, ELMO_OUTPUTS

app = typer.Typer(
    help="List, download, verify and export ELMo models (the folder is $FS_MODELS_DIR "
    "or ~/.cache/featurestore/models).",
    no_args_is_help=True,
)


@app.command("list")
@handle_errors
def list_models() -> None:
    """Show the known ELMo releases and whether each is downloaded (elmo-tiny ships with featurestore)."""
    rows = [("NAME", "DIMS", "PARAMS", "DOWNLOADED", "PATH")]
    for name, release in releases.RELEASES.items():
        present = releases.is_downloaded(name)
        rows.append(
            (
                name,
                str(release.dim),
                f"{release.params_m:g}M",
                ("shipped" if release.shipped else "yes") if present else "no",
                str(releases.release_path(name)) if present else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command()
@handle_errors
def pull(
    name: str = typer.Argument(..., help="Release to download, as shown by `fs models list`."),
    force: bool = typer.Option(False, "--force", help="Download again even if the files are present."),
) -> None:
    """Download a release's options.json and weights.hdf5 and record their sha256."""
    with contextlib.ExitStack() as stack:
        bars: dict[str, Any] = {}
        seen: dict[str, int] = {}

        def progress(fname: str, done: int, total: int | None) -> None:
            if fname not in bars:
                # click needs a length; without a Content-Length the bar only marks the file's start and end.
                bars[fname] = stack.enter_context(
                    typer.progressbar(length=total or 1, label=fname, show_eta=total is not None)
                )
                seen[fname] = 0
            if total:
                bars[fname].update(done - seen[fname])
            seen[fname] = done

        folder = releases.pull(name, progress=progress, force=force)
    shipped = " (it ships with featurestore: nothing to download)" if releases.get_release(name).shipped else ""
    typer.echo(f"{name} is in {folder}{shipped}")


@app.command()
@handle_errors
def verify(
    name: str | None = typer.Argument(None, help="Release to check; all downloaded releases if omitted."),
) -> None:
    """Recompute the sha256 of downloaded files and compare with the published or recorded ones."""
    names = [name] if name else releases.downloaded()
    if not names:
        typer.echo(f"No releases downloaded in {releases.models_dir()}.")
        return
    failed = []
    for n in names:
        report = releases.verify(n)
        for check in report.files:
            if check.ok is None:
                status = "UNKNOWN (no published or recorded sha256)"
            elif check.ok:
                status = f"OK ({check.source})"
            else:
                status = f"MISMATCH: expected {check.expected} ({check.source})"
            typer.echo(f"{n}/{check.file}  {check.sha256}  {status}")
        if not report.ok:
            failed.append(n)
    if failed:
        raise fail(
            f"checksum mismatch in {', '.join(failed)}; download again: "
            + "; ".join(f"fs models pull {n} --force" for n in failed)
        )


@app.command()
@handle_errors
def export(
    out_dir: Path = typer.Argument(..., help="Folder to write the TF SavedModel into."),
    model: str = typer.Option(..., "--model", "-m", help="Model to export: a release name or elmo:PATH."),
    output: str = typer.Option(
        DEFAULT_ELMO_OUTPUT, "--output", help=f"ELMo layer mix baked in: {', '.join(ELMO_OUTPUTS)}."
    ),
) -> None:
    """Export a native ELMo model as a SavedModel with google/elmo/3-style signatures."""
    from featurestore.embedders import load_embedder
    from featurestore.embedders.elmo_export import export_savedmodel

    embedder = load_embedder(model, output=output)
    export_savedmodel(embedder, out_dir)
    typer.echo(f"Exported {model} to {out_dir}; load it with --model hub:{out_dir}")
