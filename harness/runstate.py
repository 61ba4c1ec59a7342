"""``state.json``: what a run folder knows about the run that writes it, as one typed record.

Written atomically by the run's leader (never by a reader): when the run claims the folder (the
config's hash, what produced the records), when the MLflow runs exist (their ids, so a resumed or
re-logged run reopens them), when the records are complete and when the outputs are written.
Unknown keys (a newer harness) are kept as they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import RunFolderError
from harness.files import atomic_write

STATE = "state.json"


@dataclass
class RunState:
    """The fields of ``state.json``.

    ``config_hash``: ``ExperimentConfig.hash()`` of the run (a resume must match it);
    ``provenance``: code commit, weights and images that produced the records
    (``harness.provenance``); ``records_complete``: every record is stored and compacted;
    ``complete``: tables and figures are written; ``output_dir`` and ``weights`` for the tables;
    ``metric_directions``: each table column's better direction, so that readers can summarise
    the records without importing the metrics' code; ``tracking_payload``,
    ``tracking_final_tags`` and ``tracking_dataset``: what the MLflow runs were created and
    ended with (``harness log`` replays them);
    ``mlflow_*``: the store, experiment and run ids.
    """

    config_hash: str | None = None
    provenance: dict | None = None
    records_complete: bool = False
    complete: bool = False
    output_dir: str | None = None
    weights: str | None = None
    metric_directions: dict = field(default_factory=dict)
    tracking_payload: dict | None = None
    tracking_final_tags: dict = field(default_factory=dict)
    tracking_dataset: dict | None = None
    mlflow_run_id: str | None = None
    mlflow_child_run_ids: dict = field(default_factory=dict)
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they are

    @classmethod
    def load(cls, folder: str | Path) -> RunState:
        """The state of the run in ``folder`` (every default where there is no file yet).

        Raises:
            RunFolderError: the file exists but is not a JSON object.
        """
        path = Path(folder) / STATE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            raise RunFolderError(f"{path} is not readable JSON ({error}); the run folder is "
                                 "damaged") from None
        if not isinstance(raw, dict):
            raise RunFolderError(f"{path} does not hold a JSON object; the run folder is damaged")
        names = {spec.name for spec in dataclasses.fields(cls)} - {"extra"}
        known = {key: value for key, value in raw.items() if key in names}
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})

    @staticmethod
    def exists(folder: str | Path) -> bool:
        """Whether ``folder`` has a ``state.json``."""
        return (Path(folder) / STATE).exists()

    def to_json(self) -> str:
        content = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return json.dumps({**self.extra, **content}, indent=2)

    def save(self, folder: str | Path) -> None:
        """Write ``state.json`` in ``folder`` atomically."""
        atomic_write(Path(folder) / STATE, self.to_json())
