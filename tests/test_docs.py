"""The documentation: generated references complete, README short with working links, no
mention of sessions or of files outside the repository, and a strict docs build."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness  # noqa: F401  (registers every metric and method)
from harness.cli import main
from harness.methods._core import METHODS
from harness.metrics.registry import METRICS, register_metric
from harness.reference import (
    METRIC_REFERENCE,
    method_reference_markdown,
    metric_reference_markdown,
    missing_metric_references,
)

ROOT = Path(__file__).resolve().parents[1]


def _add_hint(names: list[str]) -> str:
    return "\n".join(
        f"metric {name!r} ({METRICS[name].fn.__module__}) has no reference entry: add to "
        f"harness/reference.py METRIC_REFERENCE[{name!r}] = MetricReference(value_range=..., "
        "cost=..., code=..., differences=(...,)) (its range, model calls per image at the "
        "defaults, the reference code's repository/file, every known difference from peers)"
        for name in names)


def test_every_registered_metric_has_its_reference_entry():
    missing = missing_metric_references()
    assert not missing, _add_hint(missing)
    stale = sorted(set(METRIC_REFERENCE) - set(METRICS))
    assert not stale, f"METRIC_REFERENCE entries for metrics not registered: {stale}"


def test_every_metric_and_method_appears_in_the_rendered_pages():
    metrics = metric_reference_markdown()
    for name, metric in METRICS.items():
        section = metrics.split(f"## `{name}`\n", 1)[1].split("\n## `", 1)[0]
        assert METRIC_REFERENCE[name].cost in section
        assert metric.citation.replace("|", "\\|") in section
        for key in (f.name for f in dataclasses.fields(metric.settings)):
            assert f"| `{key}` |" in section, (name, key)
        for difference in METRIC_REFERENCE[name].differences:
            assert difference in section
    methods = method_reference_markdown()
    for name in METHODS:
        assert f"## `{name}`\n" in methods, name


def test_format_md_prints_the_renderers_text(capsys):
    assert main(["list", "metrics", "--format", "md"]) == 0
    assert capsys.readouterr().out == metric_reference_markdown() + "\n"
    assert main(["list", "methods", "--format", "md"]) == 0
    assert capsys.readouterr().out == method_reference_markdown() + "\n"


def test_a_metric_registered_without_reference_data_is_caught():
    @dataclasses.dataclass(frozen=True)
    class Settings:
        methods: tuple | None = None

    @register_metric("undocumented_test_metric", settings=Settings, direction="up",
                     citation="none", needs=("maps",))
    def undocumented(unit, settings):
        """A metric without a reference entry."""
        return []

    try:
        assert missing_metric_references() == ["undocumented_test_metric"]
        assert "METRIC_REFERENCE['undocumented_test_metric']" in _add_hint(
            ["undocumented_test_metric"])
        assert "not documented" in metric_reference_markdown()
    finally:
        METRICS.remove("undocumented_test_metric")
    assert missing_metric_references() == []


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link) or link.startswith("#"):
            continue
        assert (ROOT / link.split("#")[0]).exists(), f"README links to missing {link}"


def test_no_document_mentions_sessions_or_design_md():
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.py"),
             *(ROOT / "harness").rglob("*.py")]
    for path in files:
        text = path.read_text()
        assert "DESIGN.md" not in text, path
        assert not re.search(r"session", text, re.IGNORECASE), path


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_docs_build_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "metrics" / "index.html").exists()
    assert (tmp_path / "methods" / "index.html").exists()
