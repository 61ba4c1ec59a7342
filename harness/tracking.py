"""MLflow logging: the only module of the harness that imports mlflow.

One parent run per experiment run and one nested child run per method, so that selecting the
children in the MLflow UI compares methods side by side.

- parent: params (model, data, target, seed, metric settings), tags (git commit, config hash,
  dataset fingerprint, model name/weights/weights hash, harness and torch versions, device),
  artifacts (resolved config, per-image records and CSV, tables, figures);
- child per method: params (the method's registry name and settings, metric settings), metrics
  (``<metric>.mean``, ``<metric>.ci_low``, ``<metric>.ci_high``, ``<metric>.n``, and against the
  reference ``<metric>.p_holm``), the same tags plus ``harness.method``.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd


class TrackingUnavailableError(RuntimeError):
    """The tracking URI cannot be reached or written."""


def check_tracking(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast (before any compute) when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise TrackingUnavailableError(f"MLflow tracking server {uri} answered "
                                                   f"HTTP {reply.status} on /health")
        except (urllib.error.URLError, OSError) as error:
            raise TrackingUnavailableError(
                f"cannot reach the MLflow tracking server at {uri}: {error}. Start it (mlflow "
                "server ...) or set tracking.uri (default sqlite:///mlflow.db), or "
                "tracking.enabled=false") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(f"tracking store {uri}: folder {folder} is missing or "
                                           "not writable")


def git_commit(path: str | Path = ".") -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = "null" if value is None else str(value)[:500]
    return out


def log_run(*, uri: str, experiment: str, run_name: str, params: dict, tags: dict,
            summary: pd.DataFrame, method_params: dict[str, dict], artifacts: list[Path],
            parent_run_id: str | None = None) -> str:
    """Log a finished experiment run; returns the parent run id. With ``parent_run_id`` (a
    resumed run) the parent run is reopened and its children replaced by fresh ones."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    if parent_run_id is not None:
        try:
            client.get_run(parent_run_id)
        except Exception:  # noqa: BLE001 - a run deleted since: start a new one
            parent_run_id = None
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=parent_run_id, run_name=run_name) as parent:
        if parent_run_id is not None:
            for old in client.search_runs(
                    [parent.info.experiment_id],
                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"):
                client.delete_run(old.info.run_id)
        else:
            mlflow.log_params(_flat("", params, {}))
        mlflow.set_tags({**tags, "harness.role": "experiment"})
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
        for method, settings in method_params.items():
            rows = summary[summary["method"] == method]
            with mlflow.start_run(run_name=method, nested=True):
                mlflow.log_params(_flat("", {"method": settings, "metrics": params.get("metrics",
                                                                                      {})}, {}))
                mlflow.set_tags({**tags, "harness.role": "method", "harness.method": method})
                values = {}
                for row in rows.to_dict("records"):
                    for stat in ("mean", "ci_low", "ci_high", "n", "p_holm"):
                        value = row.get(stat)
                        if value is not None and not pd.isna(value):
                            values[f"{row['metric']}.{stat}"] = float(value)
                mlflow.log_metrics(values)
        return parent.info.run_id


def download_run(run_id: str, uri: str, destination: str | Path) -> tuple[Path, dict]:
    """Download a parent run's records and resolved config; returns (folder, run tags)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # readers never write: do not create an empty store
        store = Path(uri[len("sqlite:///"):]).expanduser()
        if not store.is_file():
            raise ValueError(f"no MLflow store at {uri} (file {store} does not exist); pass "
                             "--tracking-uri of the store that holds run " + run_id)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except Exception as error:  # noqa: BLE001 - mlflow raises several types here
        raise ValueError(f"no MLflow run {run_id!r} at {uri}: {error}") from None
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("records.jsonl", "config.resolved.yaml"):
        client.download_artifacts(run_id, name, str(destination))
    return destination, dict(run.data.tags)


def log_tables(uri: str, run_id: str, folder: str | Path) -> None:
    """Log the ``tables`` artifacts (their caption names the run id, known only after logging)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).log_artifacts(run_id, str(folder), artifact_path="tables")
