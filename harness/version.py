"""The harness version (one place; the package metadata and MLflow tags read it)."""

__version__ = "0.2.0"
