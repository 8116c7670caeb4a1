"""Per-video provenance that a dataset records when it is built (no Dagster): ``lineage.parquet``.

One row per video the dataset consumed:

| column | meaning |
|---|---|
| ``video_key`` | the video's partition key |
| ``raw_sha256`` | sha256 of the raw video's bytes (the ``raw_video`` data version), read from ``probe/<key>.json`` |
| ``<asset>`` (one per consumed layer) | sha256 of the layer file's bytes as read = that asset's data version |

plus, in the Parquet schema metadata, ``code_versions`` (JSON: the code version of each upstream asset when
the dataset was built) and ``dataset``. The table's own sha256 goes into the dataset's materialisation
metadata (``lineage_sha256``), so a reader can tell a replaced file (`read_table` checks it).

A lineage audit then answers from a handful of records plus one Parquet read per dataset, whatever the
number of videos (orchestration.lineage); ``--verify`` checks the rows against the event log.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from . import io as lio
from . import layout
from .errors import InputError

TABLE_NAME = "lineage.parquet"
KEY, RAW = "video_key", "raw_sha256"


def raw_sha256(storage: str, key: str, settings=None) -> Optional[str]:
    """The raw video's sha256 as recorded by the probe layer (None when the video was never probed)."""
    url = layout.layer_path(storage, "probe", key)
    if not lio.exists(url, settings):
        return None
    return lio.read_json(url, settings).get("sha256")


@dataclass
class LineageTable:
    """Rows gathered while a dataset is built; `write` stores them next to the dataset's manifest."""

    dataset: str
    code_versions: dict[str, Optional[str]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)

    def add(self, key: str, raw: Optional[str], layers: dict[str, Optional[str]]) -> None:
        self.rows.append({KEY: key, RAW: raw, **layers})

    def table(self) -> pa.Table:
        cols = [KEY, RAW] + sorted({c for r in self.rows for c in r} - {KEY, RAW})
        arrays = {c: pa.array([r.get(c) for r in self.rows], type=pa.string()) for c in cols}
        meta = {"dataset": self.dataset, "code_versions": json.dumps(self.code_versions, sort_keys=True)}
        return pa.table(arrays).replace_schema_metadata(meta)

    def write(self, out_dir: str, settings=None) -> tuple[str, str]:
        """Write ``<out_dir>/lineage.parquet`` atomically; returns (url, sha256 of its bytes)."""
        data = lio.parquet_bytes(self.table())
        url = lio.join(out_dir, TABLE_NAME)
        lio.write_bytes(url, data, settings)
        return url, hashlib.sha256(data).hexdigest()


def read_table(url: str, expected_sha256: Optional[str] = None, settings=None) -> pa.Table:
    """The lineage table at `url`; InputError naming it when it is missing or not the recorded one."""
    if not lio.exists(url, settings):
        raise InputError(url, "lineage table missing")
    data = lio.read_bytes(url, settings)
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise InputError(url, "lineage table does not match the sha256 recorded with the dataset")
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


def code_versions(table: pa.Table) -> dict:
    meta = table.schema.metadata or {}
    return json.loads(meta.get(b"code_versions", b"{}"))


def find_video(table: pa.Table, key: str) -> Optional[dict]:
    """The row of `key`, or None."""
    hit = table.filter(pc.equal(table.column(KEY), key))
    return hit.slice(0, 1).to_pylist()[0] if hit.num_rows else None


__all__ = ["LineageTable", "TABLE_NAME", "code_versions", "find_video", "raw_sha256", "read_table"]
