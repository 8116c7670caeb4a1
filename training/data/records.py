"""Stage dataset records and their on-disk format.

A stage dataset is a directory `<storage>/datasets/<name>/` written as one versioned unit:

* `samples-<content_hash[:16]>.parquet`: one row per sample (schema `SAMPLES_SCHEMA`); the name carries
  its hash;
* `manifest.json`: name, stage, num_samples, inputs (video keys + data versions), `samples` (the file
  name), `content_hash` (its sha256), code_version; written last: the commit point.

A reader goes through the manifest to the exact samples file it names and checks its sha256 against
`content_hash` on the bytes it parses (`read_versioned`), so samples and manifest can never disagree and
the version a trainer records is the version it trained on. The previous samples file is kept when a new
one is committed (a reader that already holds the previous manifest can still read it); older ones go.
The curated long-video SFT dataset (curation.captioning.dataset) uses the same manifest keys
(`content_hash`, and `records` for its file).

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

LEGACY_SAMPLES_FILE = "samples.parquet"  # datasets written before samples files carried their hash
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
    """Write `samples-<hash>.parquet`, then manifest.json naming it (both atomically); drop samples files
    older than the previous one. Returns the manifest (with `samples` and `content_hash`)."""
    data = lio.parquet_bytes(records_table(records))
    digest = lio.sha256_bytes(data)
    previous = _committed_samples(out_dir)
    manifest = {**manifest, "num_samples": len(records), "samples": f"samples-{digest[:16]}.parquet",
                "content_hash": digest}
    lio.write_bytes(lio.join(out_dir, manifest["samples"]), data)
    lio.write_json(lio.join(out_dir, MANIFEST_FILE), manifest)
    fs, root = lio.get_fs(out_dir)
    for f in fs.glob(f"{root.rstrip('/')}/samples*.parquet"):
        if f.rsplit("/", 1)[-1] not in (manifest["samples"], previous):
            fs.rm(f)
    return manifest


def _committed_samples(ds_dir: str) -> str | None:
    url = lio.join(ds_dir, MANIFEST_FILE)
    return lio.read_json(url).get("samples", LEGACY_SAMPLES_FILE) if lio.exists(url) else None


def _verified_bytes(ds_dir: str, name: str, digest: str | None) -> bytes:
    """Bytes of the dataset file `name` named by a manifest, checked against the manifest's content hash."""
    url = lio.join(ds_dir, name)
    if not lio.exists(url):
        raise InputError(url, "file named by the dataset manifest is missing")
    body = lio.read_bytes(url)
    if not digest:
        raise InputError(lio.join(ds_dir, MANIFEST_FILE), "manifest has no content_hash (written by an older "
                                                           "version: materialise the dataset again)")
    if lio.sha256_bytes(body) != digest:
        raise InputError(url, "does not match the manifest's content_hash (dataset changed or corrupted)")
    return body


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
    rurl = lio.join(ds_dir, manifest["records"])
    body = _verified_bytes(ds_dir, manifest["records"], manifest.get("content_hash"))
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
    return read_versioned(path, kind)[0]


def read_versioned(path: str, kind: str = "external") -> tuple[list[dict], str]:
    """(records, version) of `path`. A dataset directory with a manifest (a stage dataset, the long-video
    SFT dataset): the records of the file its manifest names, verified against its `content_hash`, which is
    the version. Anything else (external Parquet, webdataset shards, a folder of them): the path is the
    version (external data is identified by where it is, not hashed)."""
    p = str(path)
    mf = lio.join(p, MANIFEST_FILE)
    if p.endswith((".tar", ".parquet")) or not lio.exists(mf):
        return _records_from_shards(p, kind), p
    manifest = lio.read_json(mf)
    if manifest.get("format") == "llava-conversations-jsonl":
        return _records_from_llava_jsonl(p, manifest, kind), manifest["content_hash"]
    name = manifest.get("samples", LEGACY_SAMPLES_FILE)
    body = _verified_bytes(p, name, manifest.get("content_hash"))
    import pyarrow.parquet as pq

    return _records_from_table(pq.read_table(io.BytesIO(body)), lio.join(p, name), kind), manifest["content_hash"]


def _records_from_shards(p: str, kind: str) -> list[dict]:
    if p.endswith(".tar"):
        return _records_from_webdataset(p, kind)
    if p.endswith(".parquet"):
        if not lio.exists(p):
            raise InputError(p, "no such Parquet file")
        return _records_from_table(lio.read_parquet(p), p, kind)
    fs, root = lio.get_fs(p)
    if not fs.exists(root):
        raise InputError(p, "no such dataset path")
    shards = sorted(f for f in fs.find(root) if f.endswith((".parquet", ".tar")))
    if not shards:
        raise InputError(p, "no manifest.json, *.parquet or *.tar shards found")
    proto = p.split("://", 1)[0] + "://" if lio.is_remote(p) else ""
    out: list[dict] = []
    for s in shards:
        out.extend(_records_from_shards(proto + s, kind))
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
