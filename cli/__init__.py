"""The ``fs`` command: a thin Typer layer over the featurestore library."""
