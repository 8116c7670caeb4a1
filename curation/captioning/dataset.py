"""The consolidated long-video SFT dataset (training stage 5) over every video partition.

Layout under `longvila.layout.dataset_dir(storage, "long_video_sft")`:

* ``records-<sha256[:16]>.jsonl``: every video's instruction records (see
  `annotate.instruction_records`), videos in key order; the name carries the content hash, so an
  older manifest never points at newer records;
* ``manifest.json`` (written last: it is the commit point):

      {"name": "long_video_sft", "format": "llava-conversations-jsonl", "records": "records-....jsonl",
       "content_hash": "<sha256 of the records file>", "num_records": N, "num_videos": V,
       "videos": {"<key>": {"data_version": "...", "num_records": n, "question_types": {...}}},
       "failed": {"<key>": "reason"}, "missing": ["<key>", ...],
       "question_types": {"Spatial": n, ...}, "created_utc": "..."}

`data_version` is the instructions file's sha256 (the Dagster data version of `video_instructions`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Sequence

from longvila import io as lio
from longvila import layout

from .annotate import CAPTION_TYPE, QUESTION_TYPES, read_jsonl, to_jsonl

DATASET_NAME = "long_video_sft"
FORMAT = "llava-conversations-jsonl"


def instructions_report_path(storage: str, key: str) -> str:
    return lio.join(storage, "instructions", f"{key}.report.json")


def build_long_video_sft(storage: str, keys: Sequence[str], settings=None,
                         code_versions: dict[str, str | None] | None = None) -> dict:
    """Gather the instruction records of `keys` into one dataset; return the manifest. The per-video
    provenance (raw sha256, instructions version) goes to ``lineage.parquet`` (longvila.lineage_table)."""
    from longvila.lineage_table import LineageTable, raw_sha256

    lineage = LineageTable(DATASET_NAME, dict(code_versions or {}))
    videos: dict[str, dict] = {}
    failed: dict[str, str] = {}
    missing: list[str] = []
    records: list[dict] = []
    qtypes = {t: 0 for t in (*QUESTION_TYPES, CAPTION_TYPE)}
    for key in sorted(set(keys)):
        url = layout.layer_path(storage, "instructions", key)
        if not lio.exists(url, settings):
            missing.append(key)
            continue
        data = lio.read_bytes(url, settings)
        recs = read_jsonl(data.decode("utf-8"), url)
        rep_url = instructions_report_path(storage, key)
        if lio.exists(rep_url, settings):
            rep = lio.read_json(rep_url, settings)
            if not rep.get("ok", True):
                failed[key] = str(rep.get("error"))
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.get("question_type", "?")] = counts.get(r.get("question_type", "?"), 0) + 1
            if r.get("question_type") in qtypes:
                qtypes[r["question_type"]] += 1
        videos[key] = {"data_version": hashlib.sha256(data).hexdigest(), "num_records": len(recs),
                       "question_types": counts}
        lineage.add(key, raw_sha256(storage, key, settings), {"video_instructions": videos[key]["data_version"]})
        records.extend(recs)
    body = to_jsonl(records).encode("utf-8")
    sha = hashlib.sha256(body).hexdigest()
    root = layout.dataset_dir(storage, DATASET_NAME)
    name = f"records-{sha[:16]}.jsonl"
    lio.write_bytes(lio.join(root, name), body, settings)
    table_url, table_sha = lineage.write(root, settings)
    manifest = {
        "name": DATASET_NAME,
        "format": FORMAT,
        "records": name,
        "content_hash": sha,
        "num_records": len(records),
        "num_videos": len(videos),
        "videos": videos,
        "failed": failed,
        "missing": missing,
        "question_types": qtypes,
        "lineage": {"table": table_url.rsplit("/", 1)[-1], "sha256": table_sha, "videos": len(lineage.rows)},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    lio.write_json(lio.join(root, "manifest.json"), manifest, settings)
    return manifest


def load_long_video_sft(storage: str, settings=None) -> tuple[dict, list[dict]]:
    """(manifest, records) of the dataset; the records' hash is checked against the manifest."""
    from longvila.errors import InputError

    root = layout.dataset_dir(storage, DATASET_NAME)
    murl = lio.join(root, "manifest.json")
    if not lio.exists(murl, settings):
        raise InputError(murl, "no long_video_sft manifest (materialise long_video_sft_dataset first)")
    manifest = lio.read_json(murl, settings)
    rurl = lio.join(root, manifest["records"])
    body = lio.read_bytes(rurl, settings)
    if hashlib.sha256(body).hexdigest() != manifest["content_hash"]:
        raise InputError(rurl, "records file does not match the manifest's content_hash (sha256)")
    return manifest, read_jsonl(body.decode("utf-8"), rurl)


def manifest_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)
