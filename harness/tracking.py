"""MLflow logging: the only module of the harness that imports mlflow.

One parent run per experiment run and one nested child run per method, created when the run
starts (RUNNING), updated while it computes, ended FINISHED, FAILED or KILLED. The store is
``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db`` of the
working folder (resolved to an absolute path once); ``check_tracking`` makes a real client call
before any compute. Run ids are saved in the run folder's state, so a resumed or re-logged run
reopens them; a failing tracking call never stops the computation and re-logging is idempotent.

What the parent and each child hold, live metrics and the behaviour when the server goes away:
docs/howto/mlflow.md.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import platform
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from harness.config import ExperimentConfig
from harness.errors import TrackingError
from harness.metrics.registry import get_metric, per_image_table
from harness.provenance import git_commit, git_origin
from harness.runner import Prepared
from harness.version import __version__

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "harness"
PARAM_LIMIT = 6000  # MLflow's limit on a param value
STATS = ("mean", "ci_low", "ci_high", "n", "p", "p_holm")

# bounded HTTP calls: MLflow's defaults (120 s timeout, 7 retries with backoff) make a lost
# server a silent four-minute wait; set while the harness calls MLflow, unless the user set them
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_http_lock = threading.Lock()
_http_depth = 0


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP timeout and retries bounded while the harness calls it (nested and
    thread-safe); the variables the user did not set are removed again afterwards."""
    global _http_depth
    with _http_lock:
        if _http_depth == 0:
            added = [key for key in BOUNDED_HTTP if key not in os.environ]
            for key in added:
                os.environ[key] = BOUNDED_HTTP[key]
            bounded_http.added = added
        _http_depth += 1
    try:
        yield
    finally:
        with _http_lock:
            _http_depth -= 1
            if _http_depth == 0:
                for key in getattr(bounded_http, "added", []):
                    os.environ.pop(key, None)


class TrackingUnavailableError(TrackingError):
    """The tracking URI cannot be reached or written."""


def masked(uri: str) -> str:
    """``uri`` for messages: a password in it (``https://user:secret@host``) becomes ``***``."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(uri))


def resolve_tracking(uri: str | None, experiment: str | None) -> tuple[str, str, str]:
    """(uri, experiment, where they came from): the config beats the environment
    (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``) beats the embedded default
    (``mlflow.db`` in the working folder, as an absolute path: a run started elsewhere prints
    where its store is)."""
    sources = []
    if uri:
        sources.append("config")
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        sources.append("MLFLOW_TRACKING_URI")
    else:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"  # the working folder's, made absolute
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
            raise TrackingUnavailableError(f"tracking store {masked(uri)}: folder {folder} is "
                                           "missing or not writable")
    try:
        from mlflow.tracking import MlflowClient

        with _store_lock(uri), bounded_http():
            MlflowClient(uri).search_experiments(max_results=1)
    except ModuleNotFoundError as error:
        raise TrackingUnavailableError(
            f"tracking.uri {masked(uri)}: the driver {error.name!r} is not installed (pip install "
            "it into this environment), or set another tracking.uri / tracking.enabled: false"
        ) from None
    except Exception as error:  # noqa: BLE001 - mlflow raises many types; name the URI
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingUnavailableError(
            f"cannot use the MLflow tracking store at {masked(uri)}: {masked(first)}. Start the "
            "server (mlflow server ...), fix tracking.uri (or MLFLOW_TRACKING_URI), or set "
            "tracking.enabled: false") from None


def flat_params(prefix: str, value, out: dict) -> dict:
    """Nested mapping -> ``{"a.b.c": str(value)}`` (None as ``null``), nothing cut."""
    if isinstance(value, dict):
        for key, inner in value.items():
            flat_params(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = "null" if value is None else str(value)
    return out


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go for an embedded store: ``mlruns/`` beside the
    database, as an absolute URI (MLflow's default, ``./mlruns``, follows the working folder);
    None for other stores (the server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlruns").as_uri()


def heartbeat() -> str:
    """``<host> pid <pid> at <UTC time>``: which process owns a RUNNING run, and when it last
    reported."""
    return (f"{socket.gethostname()} pid {os.getpid()} at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")


class LiveRun:
    """The MLflow side of one experiment run (see the module docstring). Every call is safe: a
    failure is reported once through ``log`` and turns the rest into no-ops (``offline``)."""

    def __init__(self, uri: str, experiment: str, *, parent_id: str | None = None,
                 child_ids: dict[str, str] | None = None,
                 remember: Callable[[str, str, str | None, dict[str, str]], None] | None = None,
                 log: Callable[[str], None] = print, update_seconds: float = 60.0,
                 output_dir: Path | None = None):
        self.uri, self.experiment = uri, experiment
        self.remember, self.log = remember, log
        self.output_dir = output_dir
        self.update_seconds = update_seconds
        self.offline: str | None = None
        self.parent_id: str | None = parent_id
        self.child_ids: dict[str, str] = dict(child_ids or {})
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
            self.log(f"MLflow at {masked(self.uri)} failed ({masked(self.offline)}); the run goes "
                     "on and its records are safe on disk; log them later with: harness log "
                     f"{self.output_dir or 'OUTPUT_DIR'}")

    def _safe(self, what: str, call: Callable[[], object]) -> object:
        if self.offline is not None:
            return None
        try:
            with bounded_http():
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
                             else client.create_experiment(
                                 self.experiment, artifact_location=artifact_root(self.uri)))
        parent = self._reopen(self.parent_id)
        if parent is None:
            parent = client.create_run(experiment_id, run_name=run_name,
                                       tags={**tags, "harness.role": "experiment"}).info.run_id
            self.child_ids = {}
        self.parent_id = parent
        self._remember()
        alive = {"harness.heartbeat": heartbeat(), "harness.host": socket.gethostname(),
                 "harness.pid": str(os.getpid())}
        client.set_tag(parent, "mlflow.note.content", description)
        for key, value in {**tags, **alive}.items():
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
            for key, value in alive.items():
                client.set_tag(child, key, value)
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
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, "harness.error")  # an earlier stop's reason
        return run_id

    def _remember(self) -> None:
        if self.remember is not None:
            self.remember(self.uri, self.experiment, self.parent_id, dict(self.child_ids))

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
        the computation never waits for the server), only the columns that changed, as
        ``live.<column>.mean`` / ``.n`` at step = n (the images behind the mean)."""
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
                    beat = heartbeat()
                    for method, columns in item.items():
                        metrics = []
                        for column, (mean, n) in columns.items():
                            if n >= 1 and math.isfinite(mean):
                                metrics += [Metric(f"live.{column}.mean", float(mean), stamp, n),
                                            Metric(f"live.{column}.n", float(n), stamp, n)]
                        if metrics and method in self.child_ids:
                            self.client.log_batch(self.child_ids[method], metrics=metrics)
                            self.client.set_tag(self.child_ids[method], "harness.heartbeat", beat)
                    if self.parent_id is not None:
                        self.client.set_tag(self.parent_id, "harness.heartbeat", beat)

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
               failed_method: str | None = None, seconds: dict[str, float] | None = None,
               table: str | None = None, dataset: dict | None = None,
               parent_metrics: dict[str, tuple[float, int]] | None = None) -> None:
        """Final metrics, curves, artifacts and ``tags`` (each logged once, however often this
        is called), then end every run with ``status``.

        ``failed_method``: the method whose computation raised ``error``: its run is FAILED with
        the error; the other methods' runs are KILLED and say that the run stopped because of
        it. ``seconds``: each method's compute time (``time.seconds``). ``table``: the results
        table appended to the parent's description. ``dataset``: the run's input (``log_input``).
        ``parent_metrics``: ``{key: (value, step)}`` logged on the parent run (the
        meta-evaluation's MC table).
        """
        self._stop_worker()
        if status == "FINISHED":
            self._safe("logging the results", lambda: self._final(
                summary, curves, artifacts, method_artifacts, tags or {}, seconds or {}, table,
                dataset))
            if parent_metrics:
                self._safe("logging the results", lambda: self._log_once(
                    self.parent_id, parent_metrics))
        self._safe("ending the runs", lambda: self._end(status, error, failed_method))

    def _final(self, summary, curves, artifacts, method_artifacts, tags, seconds, table,
               dataset) -> None:
        client = self.client
        for run_id in [self.parent_id, *self.child_ids.values()]:
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        if table is not None:
            description = tags.get("mlflow.note.content") or client.get_run(
                self.parent_id).data.tags.get("mlflow.note.content", "")
            client.set_tag(self.parent_id, "mlflow.note.content",
                           f"{description}\n\n## Results\n\n{table}")
        if dataset is not None:
            self._log_dataset(dataset)
        for method, child in self.child_ids.items():
            rows = summary[summary["method"] == method] if summary is not None else []
            values = {}
            for row in (rows.to_dict("records") if len(rows) else []):
                if not row.get("n"):
                    continue  # no value behind it: nothing to log
                for stat in STATS:
                    value = row.get(stat)
                    if value is not None and not pd.isna(value):
                        values[f"{row['metric']}.{stat}"] = (float(value), 0)
            if method in seconds:
                values["time.seconds"] = (round(float(seconds[method]), 3), 0)
            self._log_once(child, values)
            for name, (xs, series) in curves.get(method, {}).items():
                self._log_series(child, f"curve.{name}", series)
                self._log_series(child, f"curve.{name}.x", xs)
            logged = {a.path for a in client.list_artifacts(child)}
            for path in method_artifacts.get(method, []):
                path = Path(path)
                if path.exists() and path.name not in logged:
                    client.log_artifact(child, str(path))
                    if path.suffix == ".png":
                        client.log_image(child, np.asarray(Image.open(path).convert("RGB")),
                                         key=path.stem, step=0)
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(self.parent_id, str(path), artifact_path=path.name)
            elif path.exists():
                client.log_artifact(self.parent_id, str(path))

    def _log_dataset(self, dataset: dict) -> None:
        """The run's data as an MLflow input (the UI's Dataset column): its name, the dataset
        fingerprint as digest, the options and image ids as source and profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        client = self.client
        entity = Dataset(name=dataset["name"], digest=dataset["digest"][:32],
                         source_type="harness", source=json.dumps(dataset["source"]),
                         profile=json.dumps(dataset["profile"]))
        item = DatasetInput(entity, tags=[InputTag("mlflow.data.context", "evaluation")])
        for run_id in [self.parent_id, *self.child_ids.values()]:
            inputs = client.get_run(run_id).inputs
            if not any(d.dataset.digest == entity.digest
                       for d in (inputs.dataset_inputs if inputs else [])):
                client.log_inputs(run_id, datasets=[item])

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

    def _end(self, status: str, error: str | None, failed_method: str | None) -> None:
        client = self.client
        for method, run_id in self.child_ids.items():
            if failed_method is not None and status == "FAILED":
                if method == failed_method:
                    client.set_tag(run_id, "harness.error", (error or "")[:5000])
                    client.set_terminated(run_id, status="FAILED")
                else:
                    client.set_tag(run_id, "harness.error", f"stopped: the run stopped because "
                                   f"method {failed_method!r} failed (see its run)")
                    client.set_terminated(run_id, status="KILLED")
                continue
            if error:
                client.set_tag(run_id, "harness.error", error[:5000])
            client.set_terminated(run_id, status=status)
        if self.parent_id is not None:
            if error:
                where = f" (method {failed_method!r})" if failed_method else ""
                client.set_tag(self.parent_id, "harness.error", f"{error}{where}"[:5000])
            client.set_terminated(self.parent_id, status=status)

    def close_dead(self, reason: str) -> list[str]:
        """End the RUNNING runs of a run whose process died (``harness log`` on an unfinished,
        unlocked folder) as KILLED with ``reason``, reopening nothing. Returns the ids ended."""
        ended: list[str] = []

        def close() -> None:
            client = self.client
            for run_id in [*self.child_ids.values(), self.parent_id]:
                if run_id is None:
                    continue
                run = client.get_run(run_id)
                if run.info.status == "RUNNING":
                    client.set_tag(run_id, "harness.error", reason[:5000])
                    client.set_terminated(run_id, status="KILLED")
                    ended.append(run_id)

        self._safe("closing the runs", close)
        return ended


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def download_run(run_id: str, uri: str, destination: str | Path) -> tuple[Path, dict]:
    """Download a parent run's records and resolved config; returns (folder, run tags)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # readers never write: do not create an empty store
        store = Path(uri[len("sqlite:///"):]).expanduser()
        if not store.is_file():
            raise TrackingError(f"no MLflow store at {masked(uri)} (file {store} does not "
                                "exist); pass --tracking-uri of the store that holds run " + run_id)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except Exception as error:  # noqa: BLE001 - mlflow raises several types here
        raise TrackingError(f"no MLflow run {run_id!r} at {masked(uri)}: "
                            f"{masked(str(error))}") from None
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    names = {artifact.path for artifact in client.list_artifacts(run_id)}
    store = "records.parquet" if "records.parquet" in names else "records.jsonl"  # 0.1: jsonl
    for name in (store, "config.resolved.yaml"):
        client.download_artifacts(run_id, name, str(destination))
    return destination, dict(run.data.tags)


def standard_tags(commit: str, source: str) -> dict[str, str]:
    """MLflow's own tags: the commit (the UI's Version column), branch and repository where git
    knows them, the entry point, the user."""
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "mlflow.user": _user()}
    if commit not in ("unknown", ""):
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    branch, remote = git_origin()
    if branch:
        tags["mlflow.source.git.branch"] = branch
    if remote:
        tags["mlflow.source.git.repoURL"] = remote
    return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ----------------------------------------------------------------------------- what is logged


class RunningMeans:
    """Per method and table column, the running mean and n of the per-image values, for the
    live MLflow metrics (fed each unit's records)."""

    def __init__(self):
        self.sums: dict[str, dict[str, list[float]]] = {}

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        table = per_image_table(records).dropna(subset=["value"])
        for (method, column), values in table.groupby(["method", "metric"])["value"]:
            entry = self.sums.setdefault(method, {}).setdefault(column, [0.0, 0])
            entry[0] += float(values.sum())
            entry[1] += int(values.size)

    def snapshot(self) -> dict[str, dict[str, tuple[float, int]]]:
        return {method: {column: (total / n, n) for column, (total, n) in columns.items() if n}
                for method, columns in self.sums.items()}


def describe_metrics(config: ExperimentConfig) -> tuple[str, str]:
    """(A Markdown description of the run for ``mlflow.note.content``: each metric's direction,
    definition and source; the ``metric=direction`` list for the ``harness.metric_directions``
    tag)."""
    lines = [f"**{config.name}**: {config.model.name} on {config.data.name}, targets: "
             f"{config.target}. Per-image values; ↑ higher is better, ↓ lower is better.", ""]
    reference = (f"the reference method `{config.reference}`" if config.reference else
                 "no reference method (no tests)")
    reading = [
        "", "How to read the metrics of a method's run:",
        "- `<column>.mean`: the mean over images (step 0: one bar per method in the chart view);"
        f" `.ci_low` / `.ci_high`: its 95% {config.ci_method} bootstrap interval (10,000 "
        f"resamples, seed {config.seed}); `.n`: the images behind it.",
        f"- `.p`: paired Wilcoxon signed-rank test against {reference} on the same images; "
        "`.p_holm`: Holm-corrected across the whole table.",
        "- `live.<column>.mean` / `.n`: the running mean while the run computed (step = images "
        "done).",
        "- `curve.<name>`: the mean curve, one point per step; `curve.<name>.x` holds each step's "
        "x value (the fraction of pixels changed for deletion/insertion/MoRF/LeRF, the fraction "
        "removed for ROAD, the randomized block's position for `rand_*`): choose it as the "
        "x axis to read the true axis.",
        "- `time.seconds`: what the method's work units cost (maps and metrics).",
    ]
    directions = []
    for name, settings in config.metrics.items():
        entry = get_metric(name)
        arrow = entry.directions_text()
        lines.append(f"- `{name}` {arrow} {entry.summary} ({entry.citation}). Settings: "
                     f"{', '.join(f'{k}={v}' for k, v in vars(settings).items() if v is not None)}")
        directions.extend([f"{c}={d}" for c, d in entry.column_directions]
                          or [f"{name}={entry.direction}"])
    return "\n".join(lines + reading), ",".join(directions)


def column_tags(summary: pd.DataFrame, description: str) -> dict[str, str]:
    """The directions of the table's columns, which name the logged metrics (``rand_<measure>``,
    ``road_morf`` lower and ``road_lerf`` higher, ...), where the run's start knew only each
    metric's: the ``harness.metric_directions`` tag and a line added to the description."""
    columns = dict(zip(summary["metric"], summary["direction"], strict=True))
    listed = ", ".join(f"`{c}` {'↑' if d == 'up' else '↓'}" for c, d in columns.items())
    return {"harness.metric_directions": ",".join(f"{c}={d}" for c, d in columns.items()),
            "mlflow.note.content": f"{description}\n\nTable columns (the logged metrics' "
                                   f"names) and their better direction: {listed}."}


def tracking_payload(config: ExperimentConfig, prepared: Prepared, source: str) -> dict:
    """What the parent and child runs are created with (kept in the run's state, so that
    ``harness log`` can create them later without the model)."""
    info = prepared.model.harness_info
    description, directions = describe_metrics(config)
    commit = git_commit()
    tags = {
        **standard_tags(commit, source),
        "harness.git_commit": commit, "harness.config_hash": config.hash(),
        "harness.model": config.model.name, "harness.weights": info.weights,
        "harness.version": __version__, "torch.version": torch.__version__,
        "harness.device": (prepared.device if prepared.device != "cpu" else
                           f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
        + (f" x {prepared.world.size} ranks" if prepared.world.distributed else ""),
        "harness.target": config.target, "harness.n_images": str(len(prepared.dataset)),
        "harness.metric_directions": directions,
    }
    params = flat_params("", {k: v for k, v in config.to_dict().items() if k != "tracking"}, {})
    methods = {m.name: {"registry_name": m.registry_name, **m.params} for m in config.methods}
    return {"run_name": config.name, "params": params, "tags": tags, "methods": methods,
            "description": description}

