"""The record store: shards with out-of-line curves, compaction to parquet, one reader for every
layout (0.1's records.jsonl included), nothing rounded, nothing duplicated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.errors import RunFolderError
from harness.runner import load_records
from harness.store import PARQUET, ShardWriter, compact, load_frame, record_key, record_keys
from harness.store import shard_path as shard_paths


def canonical(records) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def sample_records(method: str, images: list[str]) -> list[dict]:
    rng = np.random.default_rng(len(method) + len(images))
    out = []
    for image in images:
        curve = rng.random(5).tolist()  # float64 values: nothing may round them
        out.append({"image_id": image, "method": method, "metric": "deletion", "target": 3,
                    "value": float(np.mean(curve)), "curve": curve, "target_source": "label"})
        out.append({"image_id": image, "method": method, "metric": "model_randomization",
                    "measure": "ssim", "block": "fc", "step": 1, "value": None,
                    "status": "undefined: the original map is constant (0.0)"})
        out.append({"image_id": image, "method": method, "metric": "road", "measure": "morf",
                    "value": 0.5, "probs": [0.1, 0.2], "correct": [True, False],
                    "curve": [0.0, 1.0], "curve_x": [0.1, 0.9]})
    return out


def test_shards_round_trip_exactly_and_compact_in_canonical_order(tmp_path):
    first = sample_records("vanilla", ["a", "b"])
    second = sample_records("sobel", ["a", "b"])
    ShardWriter(shard_paths(tmp_path, 0)).append(first)
    ShardWriter(shard_paths(tmp_path, 1)).append(second)
    stored = (tmp_path / "shards" / "rank-000.jsonl").read_text()
    assert '"curve_at"' in stored and '"curve":' not in stored, "curves live out of line"
    assert canonical(load_records(tmp_path)) == canonical(first + second)
    assert record_keys(tmp_path) == {record_key(r) for r in first + second}
    order = [record_key(r) for r in second + first]
    compact(tmp_path, order)
    assert (tmp_path / PARQUET).exists() and not (tmp_path / "shards").exists()
    loaded = load_records(tmp_path)
    assert [record_key(r) for r in loaded] == order, "the canonical order"
    assert canonical(loaded) == canonical(first + second), "nothing rounded or lost"
    frame = load_frame(tmp_path, curves=False)
    assert "curve" not in frame and len(frame) == 12


def test_deletion_curves_are_stored_as_float32_when_exact(tmp_path):
    import pyarrow.parquet as pq

    records = [{"image_id": str(i), "method": "m", "metric": "deletion", "value": 0.5,
                "curve": np.float32(np.random.default_rng(i).random(225)).tolist()}
               for i in range(3)]
    ShardWriter(shard_paths(tmp_path, None)).append(records)
    compact(tmp_path)
    assert str(pq.read_schema(tmp_path / PARQUET).field("curve").type) == "list<element: float>"
    assert canonical(load_records(tmp_path)) == canonical(records)


def test_duplicates_and_layouts_read_as_one_store(tmp_path):
    records = sample_records("vanilla", ["a"])
    ShardWriter(shard_paths(tmp_path, None)).append(records)
    compact(tmp_path)
    # a crash between writing records.parquet and removing the shards leaves both: deduplicated
    ShardWriter(shard_paths(tmp_path, 3)).append(records + sample_records("vanilla", ["b"]))
    assert len(load_records(tmp_path)) == 6
    # harness 0.1's records.jsonl with inline curves
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert canonical(load_records(legacy)) == canonical(records)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="holds no records"):
        load_records(tmp_path / "empty")
    with pytest.raises(RunFolderError, match="does not exist"):
        load_records(tmp_path / "nowhere")


def test_a_damaged_companion_is_named(tmp_path):
    ShardWriter(shard_paths(tmp_path, None)).append(sample_records("vanilla", ["a"]))
    companion = tmp_path / "records.f64"
    companion.write_bytes(companion.read_bytes()[:16])
    with pytest.raises(RunFolderError, match=r"records.jsonl: record 1 references curve values "
                                             r"beyond the end of the companion \(records.f64\)"):
        load_records(tmp_path)


def test_a_truncated_companion_never_hands_old_records_new_curves(tmp_path):
    """A companion cut short, then appended to again, used to give the old records the new
    records' curves (rc 0): the checksums catch it on reading, and the resuming writer drops the
    records whose curves are lost (they are recomputed) and cuts the companion first."""
    original = sample_records("vanilla", ["a", "b", "c", "d"])
    ShardWriter(shard_paths(tmp_path, None)).append(original)
    companion = tmp_path / "records.f64"
    whole = companion.read_bytes()
    companion.write_bytes(whole[: len(whole) // 2])  # c's and d's curves are lost
    ShardWriter(shard_paths(tmp_path, None)).append(sample_records("sobel", ["a"]))
    with pytest.raises(RunFolderError, match="checksum differs"):
        load_records(tmp_path)  # c's old references now point at sobel's curves
    companion.write_bytes(whole[: len(whole) // 2])
    lines = (tmp_path / "records.jsonl").read_bytes().split(b"\n")
    (tmp_path / "records.jsonl").write_bytes(b"".join(line + b"\n" for line in lines[:12]))
    notes = ShardWriter(shard_paths(tmp_path, None)).repair()
    assert any("records whose curves" in note for note in notes)
    ShardWriter(shard_paths(tmp_path, None)).append(sample_records("sobel", ["a"]))
    kept = load_records(tmp_path)
    curves = {(r["image_id"], r["metric"]): r["curve"] for r in original if "curve" in r}
    vanilla = [r for r in kept if r["method"] == "vanilla" and "curve" in r]
    assert vanilla and all(r["curve"] == curves[(r["image_id"], r["metric"])] for r in vanilla)
    assert {r["image_id"] for r in vanilla} == {"a", "b"}, "c and d are gone, to be recomputed"
    assert any(r["method"] == "sobel" for r in kept)


def test_a_torn_companion_tail_does_not_misalign_later_curves(tmp_path):
    writer = ShardWriter(shard_paths(tmp_path, None))
    first = sample_records("vanilla", ["a"])
    writer.append(first)
    with (tmp_path / "records.f64").open("ab") as handle:
        handle.write(b"\x01\x02\x03")  # a write cut short: not a whole float
    second = sample_records("sobel", ["b"])
    writer.append(second)
    assert canonical(load_records(tmp_path)) == canonical(first + second)
