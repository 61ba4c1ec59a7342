"""MLflow logging: the only module of the harness that imports mlflow.

One parent run per experiment run and one nested child run per method, created when the run
starts (status RUNNING), updated while it computes, ended FINISHED, FAILED (the error in the
``harness.error`` tag) or KILLED; selecting the children in the UI compares the methods.

- Where: ``tracking.uri`` in the config, else ``MLFLOW_TRACKING_URI``, else the embedded
  ``sqlite:///mlflow.db``; the experiment likewise (``MLFLOW_EXPERIMENT_NAME``, else
  ``harness``). ``check_tracking`` makes a real client call before any compute (any scheme; a
  missing database driver is named), creating an embedded store under a file lock so that
  concurrent first runs cannot race on its schema.
- Parent: the config as params (values too long for a param go to ``params/<key>.txt`` with a
  pointer), MLflow's own tags (``mlflow.source.git.commit``, ``mlflow.source.name``,
  ``mlflow.user``) and the harness's, a description (``mlflow.note.content``) with every metric's
  direction and definition, artifacts (resolved config, records, CSV, tables, figures).
- Child per method: params ``method.*``; while computing, the running ``<column>.mean`` and
  ``<column>.n`` (step = images so far) at most every ``tracking.update_seconds``; at the end
  ``<column>.mean``, ``.ci_low``, ``.ci_high``, ``.n`` for columns with n >= 1 and ``.p``,
  ``.p_holm`` where a paired test ran; the mean curves as step metrics ``curve.<name>`` (step =
  point index, or the randomized block's position); artifacts: the method's maps figure and its
  per-image CSV.
- Robustness: the parent and child ids are written to the run folder's state as soon as they
  exist, so a resumed (or re-logged) run reopens them; a failing tracking call never stops the
  computation: it is reported once, logging stops (HTTP calls are bounded: a short timeout and
  two retries), the records keep streaming to disk, and ``harness log RUN_DIR`` uploads what is
  missing later. Every final value is logged idempotently (an existing metric history point with
  the same step and value is not logged again), so re-logging duplicates nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from harness.provenance import git_commit  # noqa: F401  (re-exported: the commit tag's source)

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "harness"
PARAM_LIMIT = 6000  # MLflow's limit on a param value
STATS = ("mean", "ci_low", "ci_high", "n", "p", "p_holm")

# bounded HTTP calls: MLflow's defaults (120 s timeout, 7 retries with backoff) make a lost
# server a silent four-minute wait; the user's own settings win
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


class TrackingUnavailableError(RuntimeError):
    """The tracking URI cannot be reached or written."""


def resolve_tracking(uri: str | None, experiment: str | None) -> tuple[str, str, str]:
    """(uri, experiment, where they came from): the config beats the environment
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``) beats the embedded default."""
    sources = []
    if uri:
        sources.append("config")
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        sources.append("MLFLOW_TRACKING_URI")
    else:
        uri = DEFAULT_URI
        sources.append("default")
    if experiment:
        pass
    elif os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
        sources.append("MLFLOW_EXPERIMENT_NAME")
    else:
        experiment = DEFAULT_EXPERIMENT
    return uri, experiment, ", ".join(dict.fromkeys(sources))


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside an embedded sqlite store while it may be created or
    migrated (MLflow's schema migration is not safe against a concurrent first use)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri[len("sqlite:///"):]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_tracking(uri: str) -> None:
    """A real client call against ``uri`` before any compute: an unreachable server, a missing
    database driver or an unwritable store is a ``TrackingUnavailableError`` naming the URI."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingUnavailableError(f"tracking store {uri}: folder {folder} is missing or "
                                           "not writable")
    try:
        from mlflow.tracking import MlflowClient

        with _store_lock(uri):
            MlflowClient(uri).search_experiments(max_results=1)
    except ModuleNotFoundError as error:
        raise TrackingUnavailableError(
            f"tracking.uri {uri}: the driver {error.name!r} is not installed (pip install it into "
            "this environment), or set another tracking.uri / tracking.enabled: false") from None
    except Exception as error:  # noqa: BLE001 - mlflow raises many types; name the URI
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingUnavailableError(
            f"cannot use the MLflow tracking store at {uri}: {first}. Start the server (mlflow "
            "server ...), fix tracking.uri (or MLFLOW_TRACKING_URI), or set tracking.enabled: "
            "false") from None


def flat_params(prefix: str, value, out: dict) -> dict:
    """Nested mapping -> ``{"a.b.c": str(value)}`` (None as ``null``), nothing cut."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flat_params(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = "null" if value is None else str(value)
    return out


class LiveRun:
    """The MLflow side of one experiment run (see the module docstring). Every call is safe: a
    failure is reported once through ``log`` and turns the rest into no-ops (``offline``)."""

    def __init__(self, uri: str, experiment: str, *, state: dict,
                 save_state: Callable[[dict], None], log: Callable[[str], None] = print,
                 update_seconds: float = 60.0):
        self.uri, self.experiment = uri, experiment
        self.state, self.save_state, self.log = state, save_state, log
        self.update_seconds = update_seconds
        self.offline: str | None = None
        self.parent_id: str | None = state.get("mlflow_run_id")
        self.child_ids: dict[str, str] = dict(state.get("mlflow_child_run_ids", {}))
        self._last_update = -math.inf
        self._last_snapshot: dict | None = None
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def _fail(self, what: str, error: BaseException) -> None:
        if self.offline is None:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            self.offline = f"{what}: {first}"
            self.log(f"MLflow at {self.uri} failed ({self.offline}); the run goes on and its "
                     "records are safe on disk; log them later with: harness log "
                     f"{self.state.get('output_dir', 'OUTPUT_DIR')}")

    def _safe(self, what: str, call: Callable[[], object]) -> object:
        if self.offline is not None:
            return None
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - tracking must never stop the computation
            self._fail(what, error)
            return None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, run_name: str, params: dict, tags: dict, methods: dict[str, dict],
              description: str, long_params_folder: Path) -> None:
        """Create (or, resuming, reopen) the parent and one child per method, RUNNING."""
        self._safe("starting the runs", lambda: self._start(
            run_name, params, tags, methods, description, long_params_folder))
        if self.offline is None:
            self._worker = threading.Thread(target=self._drain, name="harness-mlflow",
                                            daemon=True)
            self._worker.start()

    def _start(self, run_name, params, tags, methods, description, long_params_folder) -> None:
        client = self.client
        with _store_lock(self.uri):
            found = client.get_experiment_by_name(self.experiment)
            experiment_id = (found.experiment_id if found is not None
                             else client.create_experiment(self.experiment))
        parent = self._reopen(self.parent_id)
        if parent is None:
            parent = client.create_run(experiment_id, run_name=run_name,
                                       tags={**tags, "harness.role": "experiment"}).info.run_id
            self.child_ids = {}
        self.parent_id = parent
        self._remember()
        client.set_tag(parent, "mlflow.note.content", description)
        for key, value in tags.items():
            client.set_tag(parent, key, value)
        self._log_params(parent, params, long_params_folder)
        for method, settings in methods.items():
            child = self._reopen(self.child_ids.get(method))
            if child is None:
                child = client.create_run(experiment_id, run_name=method, tags={
                    **tags, "harness.role": "method", "harness.method": method,
                    "mlflow.parentRunId": parent}).info.run_id
                self.child_ids[method] = child
                self._remember()
            client.set_tag(child, "mlflow.note.content", description)
            self._log_params(child, flat_params("method", settings, {}), long_params_folder)

    def _reopen(self, run_id: str | None) -> str | None:
        if run_id is None:
            return None
        client = self.client
        try:
            run = client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted or from another store: start afresh
            return None
        if run.info.lifecycle_stage != "active":
            return None
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id

    def _remember(self) -> None:
        self.state["mlflow_run_id"] = self.parent_id
        self.state["mlflow_child_run_ids"] = dict(self.child_ids)
        self.state["mlflow_uri"], self.state["mlflow_experiment"] = self.uri, self.experiment
        self.save_state(self.state)

    def _log_params(self, run_id: str, params: dict, folder: Path) -> None:
        client = self.client
        existing = client.get_run(run_id).data.params
        for key, value in params.items():
            if len(value) > PARAM_LIMIT:
                path = folder / "params" / f"{key}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(value)
                client.log_artifact(run_id, str(path), artifact_path="params")
                value = f"(long value: see artifact params/{key}.txt)"
            if key not in existing:
                client.log_param(run_id, key, value)
            elif existing[key] != value:  # a resumed run with a setting outside the config hash
                changed = f"{existing[key]} -> {value}"
                client.set_tag(run_id, f"harness.param_changed.{key}", changed[:5000])
                self.log(f"MLflow: param {key} of run {run_id} stays {existing[key]!r} (MLflow "
                         f"params cannot change); this run uses {value!r}, recorded in the tag "
                         f"harness.param_changed.{key}")

    # ------------------------------------------------------------------ while computing

    def progress(self, running: Callable[[], dict[str, dict[str, tuple[float, int]]]],
                 *, force: bool = False) -> None:
        """Queue the running means: ``running()`` -> ``{method: {column: (mean, n)}}``; called
        after every unit, logged at most every ``update_seconds`` (in a background thread, so
        the computation never waits for the server), only the columns that changed (step = n,
        the images behind the mean)."""
        if self.offline is not None or self._worker is None:
            return
        now = time.monotonic()
        if not force and now - self._last_update < self.update_seconds:
            return
        snapshot = running()
        before = self._last_snapshot or {}
        changed = {method: {column: value for column, value in columns.items()
                            if before.get(method, {}).get(column) != value}
                   for method, columns in snapshot.items()}
        changed = {method: columns for method, columns in changed.items() if columns}
        if not changed:
            return
        self._last_update, self._last_snapshot = now, snapshot
        self._queue.put(changed)

    def _drain(self) -> None:
        from mlflow.entities import Metric

        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            if self.offline is None:
                stamp = int(time.time() * 1000)

                def send(item=item, stamp=stamp):
                    for method, columns in item.items():
                        metrics = []
                        for column, (mean, n) in columns.items():
                            if n >= 1 and math.isfinite(mean):
                                metrics += [Metric(f"{column}.mean", float(mean), stamp, n),
                                            Metric(f"{column}.n", float(n), stamp, n)]
                        if metrics and method in self.child_ids:
                            self.client.log_batch(self.child_ids[method], metrics=metrics)

                self._safe("logging progress", send)
            self._queue.task_done()

    def _stop_worker(self, timeout: float = 60.0) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    # ------------------------------------------------------------------ the end

    def finish(self, *, summary: pd.DataFrame | None, curves: dict, artifacts: list[Path],
               method_artifacts: dict[str, list[Path]], status: str = "FINISHED",
               error: str | None = None, tags: dict | None = None,
               parent_metrics: dict[str, tuple[float, int]] | None = None) -> None:
        """Final metrics, curves, artifacts, ``tags`` and ``parent_metrics`` (``{key: (value,
        step)}`` on the parent run; each logged once, however often this is called), then end
        every run with ``status``."""
        self._stop_worker()
        if status == "FINISHED":
            self._safe("logging the results", lambda: self._final(
                summary, curves, artifacts, method_artifacts, tags or {}))
            if parent_metrics:
                self._safe("logging the results", lambda: self._log_once(
                    self.parent_id, parent_metrics))
        self._safe("ending the runs", lambda: self._end(status, error))

    def _final(self, summary, curves, artifacts, method_artifacts, tags) -> None:
        client = self.client
        for run_id in [self.parent_id, *self.child_ids.values()]:
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        for method, child in self.child_ids.items():
            rows = summary[summary["method"] == method] if summary is not None else []
            values = {}
            for row in (rows.to_dict("records") if len(rows) else []):
                if not row.get("n"):
                    continue  # no value behind it: nothing to log
                for stat in STATS:
                    value = row.get(stat)
                    if value is not None and not pd.isna(value):
                        values[f"{row['metric']}.{stat}"] = (float(value), int(row["n"]))
            self._log_once(child, values)
            for name, series in curves.get(method, {}).items():
                self._log_series(child, f"curve.{name}", series)
            for path in method_artifacts.get(method, []):
                if Path(path).exists():
                    client.log_artifact(child, str(path))
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(self.parent_id, str(path), artifact_path=path.name)
            elif path.exists():
                client.log_artifact(self.parent_id, str(path))

    def _log_once(self, run_id: str, values: dict[str, tuple[float, int]]) -> None:
        from mlflow.entities import Metric

        client = self.client
        stamp = int(time.time() * 1000)
        fresh = []
        for key, (value, step) in values.items():
            history = client.get_metric_history(run_id, key)
            if any(point.step == step and _same(point.value, value) for point in history):
                continue
            fresh.append(Metric(key, value, stamp, step))
        for start in range(0, len(fresh), 500):
            client.log_batch(run_id, metrics=fresh[start:start + 500])

    def _log_series(self, run_id: str, key: str, series: np.ndarray) -> None:
        from mlflow.entities import Metric

        client = self.client
        have = {point.step for point in client.get_metric_history(run_id, key)}
        stamp = int(time.time() * 1000)
        fresh = [Metric(key, float(v), stamp, step) for step, v in enumerate(series)
                 if step not in have and math.isfinite(float(v))]
        for start in range(0, len(fresh), 500):
            client.log_batch(run_id, metrics=fresh[start:start + 500])

    def _end(self, status: str, error: str | None) -> None:
        client = self.client
        for run_id in [*self.child_ids.values(), self.parent_id]:
            if run_id is None:
                continue
            if error:
                client.set_tag(run_id, "harness.error", error[:5000])
            client.set_terminated(run_id, status=status)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


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
    names = {artifact.path for artifact in client.list_artifacts(run_id)}
    store = "records.parquet" if "records.parquet" in names else "records.jsonl"  # 0.1: jsonl
    for name in (store, "config.resolved.yaml"):
        client.download_artifacts(run_id, name, str(destination))
    return destination, dict(run.data.tags)


def standard_tags(commit: str, source: str) -> dict[str, str]:
    """MLflow's own tags: the commit (the UI's Version column), the entry point, the user."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "mlflow.user": _user()}
    if commit not in ("unknown", ""):
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"

