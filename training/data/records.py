"""Stage dataset records and their on-disk format.

A stage dataset is a directory `<storage>/datasets/<name>/` with

| file | content |
|---|---|
| samples.parquet | one row per sample (schema `SAMPLES_SCHEMA`) |
| manifest.json | name, stage, num_samples, inputs (video keys + data versions), content_hash, code_version |

A sample row: `sample_id`, `kind` (caption / qa / passkey / long_video_sft / external), `video_key`
("" for text-only), `conversations` (LLaVA JSON: [{"from": "human", "value": "<video>\\n..."},
{"from": "gpt", "value": "..."}]), `frames` (JPEG bytes, in time order) and `meta` (JSON).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from longvila import io as lio
from longvila.errors import InputError

SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"

SAMPLES_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("kind", pa.string()),
    ("video_key", pa.string()),
    ("conversations", pa.string()),
    ("frames", pa.list_(pa.binary())),
    ("meta", pa.string()),
])


def make_record(sample_id: str, kind: str, conversations: list[dict], frames: list[bytes] | None = None,
                video_key: str = "", meta: dict | None = None) -> dict:
    return {
        "sample_id": sample_id,
        "kind": kind,
        "video_key": video_key,
        "conversations": json.dumps(conversations, ensure_ascii=False),
        "frames": list(frames or []),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def records_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=SAMPLES_SCHEMA)


def write_dataset(out_dir: str, records: list[dict], manifest: dict) -> dict:
    """Write samples.parquet then manifest.json (both atomically); returns the manifest with its content hash."""
    table = records_table(records)
    sink = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    import hashlib

    manifest = dict(manifest)
    manifest["num_samples"] = len(records)
    manifest["content_hash"] = hashlib.sha256(data).hexdigest()
    lio.write_bytes(lio.join(out_dir, SAMPLES_FILE), data)
    lio.write_json(lio.join(out_dir, MANIFEST_FILE), manifest)
    return manifest


def read_manifest(ds_dir: str) -> dict:
    url = lio.join(ds_dir, MANIFEST_FILE)
    if not lio.exists(url):
        raise InputError(url, "dataset has no manifest.json (not built, or not a dataset directory)")
    return lio.read_json(url)


def _norm_conversations(v, source: str) -> str:
    if isinstance(v, (bytes, bytearray)):
        v = v.decode("utf-8")
    if isinstance(v, str):
        try:
            conv = json.loads(v)
        except ValueError:
            raise InputError(source, "conversations is not valid JSON") from None
    else:
        conv = v
    if not isinstance(conv, list) or not conv:
        raise InputError(source, "conversations must be a non-empty list of turns")
    return json.dumps(conv, ensure_ascii=False)


def _records_from_table(table: pa.Table, source: str, kind: str) -> list[dict]:
    cols = set(table.column_names)
    conv_col = next((c for c in ("conversations", "conversation", "messages") if c in cols), None)
    if conv_col is None:
        raise InputError(source, f"no conversations column (columns: {sorted(cols)})")
    frame_col = next((c for c in ("frames", "images", "jpegs", "image") if c in cols), None)
    out = []
    for i, row in enumerate(table.to_pylist()):
        fr = row.get(frame_col) if frame_col else None
        if isinstance(fr, (bytes, bytearray)):
            fr = [fr]
        out.append({
            "sample_id": str(row.get("sample_id") or row.get("id") or f"{Path(source).stem}-{i:06d}"),
            "kind": str(row.get("kind") or kind),
            "video_key": str(row.get("video_key") or ""),
            "conversations": _norm_conversations(row[conv_col], f"{source} row {i}"),
            "frames": list(fr or []),
            "meta": row.get("meta") if isinstance(row.get("meta"), str) else json.dumps(row.get("meta") or {}),
        })
    return out


def _records_from_webdataset(path: str, kind: str) -> list[dict]:
    """A webdataset shard: members grouped by key; `<key>.json` holds {"conversations": [...]} (or the
    list itself); image members (`.jpg`, `.jpeg`, `.png`, or `.<n>.jpg`) are the frames in name order."""
    groups: dict[str, dict] = {}
    with lio.local_copy(path, suffix=".tar") as local:
        try:
            tf = tarfile.open(local)
        except tarfile.TarError as e:
            raise InputError(path, f"not a readable webdataset tar: {e}") from None
        with tf:
            for m in tf.getmembers():
                if not m.isfile():
                    continue
                name = os.path.basename(m.name)
                key, _, ext = name.partition(".")
                g = groups.setdefault(key, {"frames": []})
                data = tf.extractfile(m).read()
                if ext == "json":
                    g["json"] = json.loads(data)
                elif ext.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png"):
                    g["frames"].append((ext, data))
    out = []
    for key in sorted(groups):
        g = groups[key]
        if "json" not in g:
            continue
        j = g["json"]
        conv = j.get("conversations", j) if isinstance(j, dict) else j
        out.append({
            "sample_id": key,
            "kind": kind,
            "video_key": str(j.get("video_key", "")) if isinstance(j, dict) else "",
            "conversations": _norm_conversations(conv, f"{path}:{key}.json"),
            "frames": [d for _, d in sorted(g["frames"])],
            "meta": "{}",
        })
    return out


def _frames_of(url: str, cache: dict) -> list[bytes]:
    """All JPEG frames of a `video_frames` Parquet file (VIDEO_FRAMES schema), in frame order."""
    if url not in cache:
        if not lio.exists(url):
            raise InputError(url, "frames file referenced by the dataset does not exist")
        t = lio.read_parquet(url, columns=["frame_number", "jpeg"])
        order = sorted(range(t.num_rows), key=lambda i: t.column("frame_number")[i].as_py())
        jp = t.column("jpeg").to_pylist()
        cache[url] = [jp[i] for i in order]
    return cache[url]


def _records_from_llava_jsonl(ds_dir: str, manifest: dict, kind: str) -> list[dict]:
    """The curated long-video SFT dataset (curation.captioning.dataset): manifest.json + records-<hash>.jsonl
    whose records reference the whole video's frames (`frames.path`, a video_frames Parquet file)."""
    import hashlib

    rurl = lio.join(ds_dir, manifest["records"])
    if not lio.exists(rurl):
        raise InputError(rurl, "records file named by the manifest is missing")
    body = lio.read_bytes(rurl)
    if manifest.get("sha256") and hashlib.sha256(body).hexdigest() != manifest["sha256"]:
        raise InputError(rurl, "records file does not match the manifest's sha256")
    storage = ds_dir.rstrip("/").rsplit("/", 2)[0]
    cache: dict = {}
    out = []
    for i, line in enumerate(body.decode("utf-8").splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        fr = r.get("frames") or {}
        frames: list[bytes] = []
        if fr.get("path"):
            url = fr["path"]
            if not (lio.is_remote(url) or url.startswith("/")):
                url = lio.join(storage, url)
            frames = _frames_of(url, cache)
        out.append({
            "sample_id": str(r.get("id") or f"{r.get('video_key', 'rec')}-{i:05d}"),
            "kind": kind,
            "video_key": str(r.get("video_key") or ""),
            "conversations": _norm_conversations(r["conversations"], f"{rurl} line {i + 1}"),
            "frames": frames,
            "meta": json.dumps({k: r.get(k) for k in ("question_type", "video") if k in r}, sort_keys=True),
        })
    return out


def read_records(path: str, kind: str = "external") -> list[dict]:
    """Records of a stage dataset directory, the curated long-video SFT dataset directory, a Parquet
    file, or a webdataset .tar shard (local or URL)."""
    p = str(path)
    if p.endswith(".tar"):
        return _records_from_webdataset(p, kind)
    if p.endswith(".parquet"):
        if not lio.exists(p):
            raise InputError(p, "no such Parquet file")
        return _records_from_table(lio.read_parquet(p), p, kind)
    # a directory: our own stage dataset layout, or a folder of parquet / tar shards
    mf = lio.join(p, MANIFEST_FILE)
    if lio.exists(mf):
        manifest = lio.read_json(mf)
        if manifest.get("format") == "llava-conversations-jsonl":
            return _records_from_llava_jsonl(p, manifest, kind)
    sp = lio.join(p, SAMPLES_FILE)
    if lio.exists(sp):
        return _records_from_table(lio.read_parquet(sp), sp, kind)
    fs, root = lio.get_fs(p)
    if not fs.exists(root):
        raise InputError(p, "no such dataset path")
    shards = sorted(f for f in fs.find(root) if f.endswith((".parquet", ".tar")))
    if not shards:
        raise InputError(p, "no samples.parquet, *.parquet or *.tar shards found")
    proto = p.split("://", 1)[0] + "://" if lio.is_remote(p) else ""
    out: list[dict] = []
    for s in shards:
        out.extend(read_records(proto + s, kind))
    return out


def iter_jpeg_images(frames: Iterable[bytes], source: str):
    from PIL import Image

    for i, b in enumerate(frames):
        try:
            im = Image.open(io.BytesIO(b))
            im.load()
        except Exception as e:  # noqa: BLE001 - PIL raises many types
            raise InputError(source, f"frame {i} is not a decodable image: {e}") from None
        yield im.convert("RGB")
