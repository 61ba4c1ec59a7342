"""MkDocs hook: writes the metric and method references from the registries at build time."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.reference import (  # noqa: E402  (the repository first on the path)
    method_reference_markdown,
    metric_reference_markdown,
    missing_metric_references,
)


def on_files(files: Files, config) -> Files:
    """Add the generated ``metrics.md`` and ``methods.md`` pages."""
    missing = missing_metric_references()
    if missing:
        raise PluginError(f"metrics without a harness.reference.METRIC_REFERENCE entry: "
                          f"{', '.join(missing)}")
    files.append(File.generated(config, "metrics.md", content=metric_reference_markdown()))
    files.append(File.generated(config, "methods.md", content=method_reference_markdown()))
    return files
