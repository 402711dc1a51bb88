"""On-disk feature shards: the output contract of ``gmptl extract``. Pure: no ray.

A feature folder holds, per shard i and layer L::

    shard_00012.L10.npy     (frames of every utterance in the shard, concatenated, D) float16/float32
    shard_00012.json        the commit record, written last and atomically: utt_ids, n_frames,
                            offsets, per-file byte size and sha256

and, once every shard is committed, ``index.parquet`` with one row per
(utt_id, layer): shard, offset, n_frames. A shard counts as done only if its
JSON exists and every file it names has the recorded size (and, when verified,
checksum): a half-written shard from a crashed worker is recomputed, never read.
The steps that read shards after extraction (k-means, labels) check each layer
file they read against its record (:func:`check_shard_array`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gmptl import files, paths
from gmptl.errors import GmptlError

INDEX_FILE = paths.FEATURES_INDEX


def shard_json(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:05d}.json"


def shard_array(folder: Path, shard: int, layer: int) -> Path:
    return folder / f"shard_{shard:05d}.L{layer}.npy"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(
    folder: Path, shard: int, utt_ids: list[str], feats: list[dict[int, np.ndarray]], dtype: str
) -> dict[str, Any]:
    """Write one shard's arrays, then its commit record. Returns the record."""
    layers = sorted(feats[0]) if feats else []
    n_frames = [int(next(iter(f.values())).shape[0]) for f in feats]
    offsets = np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(int).tolist() if feats else []
    written = {}
    for layer in layers:
        arr = np.concatenate([f[layer] for f in feats], axis=0).astype(dtype, copy=False)  # (sum frames, D)
        path = shard_array(folder, shard, layer)
        files.save_npy(path, arr)
        written[str(layer)] = {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path)}
    record = {
        "shard": shard,
        "utt_ids": utt_ids,
        "n_frames": n_frames,
        "offsets": offsets,
        "layers": layers,
        "dim": int(next(iter(feats[0].values())).shape[1]) if feats else 0,
        "dtype": dtype,
        "files": written,
    }
    files.write_text(shard_json(folder, shard), json.dumps(record))
    return record


def shard_problem(folder: Path, shard: int, expected_utts: list[str], verify: bool = False) -> str | None:
    """None if the shard is committed and intact; otherwise why it must be (re)computed."""
    p = shard_json(folder, shard)
    if not p.is_file():
        return "missing"
    try:
        record = json.loads(p.read_text())
    except json.JSONDecodeError:
        return "unreadable commit record"
    if record.get("utt_ids") != expected_utts:
        return "holds other utterances than planned"
    for info in record["files"].values():
        if (problem := _file_problem(folder, info, verify)) is not None:
            return f"{info['name']}: {problem}"
    return None


def _file_problem(folder: Path, info: dict[str, Any], verify: bool) -> str | None:
    """None if the file of a commit record's ``files`` entry has its recorded size (and checksum)."""
    f = folder / info["name"]
    if not f.is_file():
        return "missing"
    if f.stat().st_size != info["bytes"]:
        return "size differs from its commit record"
    if verify and _sha256(f) != info["sha256"]:
        return "checksum differs from its commit record"
    return None


class CorruptShardError(GmptlError, ValueError):
    """A feature shard file no longer matches its commit record (changed or damaged after extraction)."""


# Rerunning repairs: every command that clusters or labels (`gmptl run`, `cluster`, `label`, `pretrain`)
# first runs extraction with verify=True, which checksums every cached shard and recomputes a damaged one.
_REPAIR = (
    "rerun the command: its extraction step checksums every cached shard first and recomputes a damaged one"
)


def check_shard_array(folder: Path, shard: int, layer: int) -> None:
    """Check one shard's layer file against the size and sha256 of its commit record, before it is read.

    Raises:
        CorruptShardError: the commit record is missing or unreadable, or the file is missing, has
            another size or another checksum; the message names the file and how to repair it.
    """
    folder = Path(folder)
    record_path = shard_json(folder, shard)
    try:
        info = json.loads(record_path.read_text())["files"][str(layer)]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CorruptShardError(
            f"feature shard {shard} in {folder}: commit record {record_path.name} is missing, unreadable or has "
            f"no layer {layer} ({type(e).__name__}: {e}); {_REPAIR}"
        ) from e
    problem = _file_problem(folder, info, verify=True)
    if problem is not None:
        raise CorruptShardError(
            f"feature shard file {folder / info['name']}: {problem} ({record_path.name}), so it changed after "
            f"extraction; {_REPAIR}"
        )


def build_index(folder: Path, n_shards: int) -> pd.DataFrame:
    rows = []
    for shard in range(n_shards):
        record = json.loads(shard_json(folder, shard).read_text())
        for layer in record["layers"]:
            for utt, off, n in zip(record["utt_ids"], record["offsets"], record["n_frames"], strict=True):
                rows.append((utt, layer, shard, off, n))
    df = pd.DataFrame(rows, columns=["utt_id", "layer", "shard", "offset", "n_frames"])
    df = df.sort_values(["utt_id", "layer"], kind="stable").reset_index(drop=True)
    files.write_parquet(df, folder / INDEX_FILE)
    return df


@dataclass
class FeatureStore:
    """Read access to a committed feature folder (memory-mapped; nothing loaded up front)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `gmptl extract` first (or it did not finish)")
        self.index = pd.read_parquet(path).set_index(["utt_id", "layer"])
        self._arrays: dict[tuple[int, int], np.ndarray] = {}

    def _array(self, shard: int, layer: int) -> np.ndarray:
        key = (shard, layer)
        if key not in self._arrays:
            self._arrays[key] = np.load(shard_array(self.folder, shard, layer), mmap_mode="r")
        return self._arrays[key]

    def get(self, utt_id: str, layer: int) -> np.ndarray:
        """(n_frames, D) array of one utterance's frames (a read-only memory map slice)."""
        row = self.index.loc[(utt_id, layer)]
        return self._array(int(row.shard), layer)[int(row.offset) : int(row.offset) + int(row.n_frames)]

    def utterances(self) -> list[str]:
        return sorted(self.index.index.get_level_values(0).unique())
