"""Building the per-stage datasets (library side of the `stageN_dataset` assets).

| stage | kind | source |
|---|---|---|
| 1 alignment, 2 pre-training | `captions` | clip captions + clip frames of every curated video: one caption sample per captioned clip |
| 3 short SFT | `caption_and_qa` | caption samples + short QA samples (what happens in a clip; temporal order of two adjacent clips) |
| any | `external` | Parquet / webdataset shards named by path or URL (copied into the dataset as records) |
| 4 context extension | `passkey` | locally generated long-text passkey-retrieval set (rendered to each phase's length at training time) |
| 5 long SFT | `long_video_sft` | the curated long-video SFT dataset (read by the trainer directly) |

`build_stage_dataset(...)` writes `<out_dir>/samples-<hash>.parquet` and then `manifest.json` (one
versioned unit, see training.data.records) and returns the manifest: name, stage, kind, num_samples,
samples (file name), content_hash (its sha256), inputs (per video: key + data versions of the caption
and frame files, hashed from the bytes read), code_version, and for caption datasets ``lineage`` (the
per-video ``lineage.parquet``: raw sha256 and layer versions, see longvila.lineage_table).
A dataset with zero usable samples raises `InputError` instead of writing anything.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import pyarrow as pa

from longvila import io as lio
from longvila import layout
from longvila.errors import InputError
from longvila.lineage_table import LineageTable, raw_sha256

from .passkey import passkey_records
from .records import make_record, read_records, write_dataset
from .stages import uniform_indices

BUILD_VERSION = "stage-data-v2"
# lake layer read by a caption dataset -> the asset that writes it (the lineage table's column names)
CAPTION_LAYERS = {"captions": "clip_captions", "clip_frames": "clip_frames"}

CAPTION_PROMPTS = (
    "<video>\nDescribe this video clip.",
    "<video>\nWrite a short caption for the clip.",
    "<video>\nWhat does the clip show?",
)
QA_WHAT = "<video>\nWhat happens in this clip? Answer in one sentence."
QA_ORDER = "<video>\nThe video shows two scenes one after the other. What happens in the second scene?"


def _col(table: pa.Table, names: Iterable[str], source: str) -> str:
    for n in names:
        if n in table.column_names:
            return n
    raise InputError(source, f"none of the columns {list(names)} present (has {table.column_names})")


def clip_caption_map(table: pa.Table, source: str) -> dict[int, str]:
    """clip index -> caption text (empty / missing captions skipped)."""
    ci = _col(table, ("clip_index", "index", "clip"), source)
    cc = _col(table, ("caption", "text", "clip_caption"), source)
    ok = table.column("ok").to_pylist() if "ok" in table.column_names else [True] * table.num_rows
    out = {}
    for i, c, good in zip(table.column(ci).to_pylist(), table.column(cc).to_pylist(), ok):
        if good and isinstance(c, str) and c.strip():
            out[int(i)] = c.strip()
    return out


def clip_frame_map(table: pa.Table, source: str) -> dict[int, list[bytes]]:
    """clip index -> JPEG frames in order (CLIP_FRAMES schema)."""
    ci = _col(table, ("clip_index",), source)
    order = _col(table, ("frame_index_in_clip", "frame_number"), source)
    jp = _col(table, ("jpeg", "frame", "image"), source)
    rows = sorted(zip(table.column(ci).to_pylist(), table.column(order).to_pylist(), table.column(jp).to_pylist()))
    out: dict[int, list[bytes]] = {}
    for c, _, b in rows:
        out.setdefault(int(c), []).append(b)
    return out


def _first_sentence(text: str) -> str:
    for sep in (". ", "! ", "? "):
        if sep in text:
            return text.split(sep, 1)[0].strip() + sep.strip()
    return text.strip()


def video_samples(video_key: str, captions: dict[int, str], frames: dict[int, list[bytes]], kind: str,
                  num_frames: int) -> list[dict]:
    """Caption samples (and for `caption_and_qa` also short QA samples) of one video."""
    out = []
    clips = sorted(c for c in captions if frames.get(c))
    for n, c in enumerate(clips):
        fr = frames[c]
        fr = [fr[i] for i in uniform_indices(len(fr), num_frames)] if num_frames else fr
        prompt = CAPTION_PROMPTS[n % len(CAPTION_PROMPTS)]
        out.append(make_record(f"{video_key}/c{c:05d}/caption", "caption",
                               [{"from": "human", "value": prompt}, {"from": "gpt", "value": captions[c]}],
                               fr, video_key, {"clip_index": c}))
        if kind == "caption_and_qa":
            out.append(make_record(f"{video_key}/c{c:05d}/qa", "qa",
                                   [{"from": "human", "value": QA_WHAT},
                                    {"from": "gpt", "value": _first_sentence(captions[c])}],
                                   fr, video_key, {"clip_index": c, "question": "what"}))
    if kind == "caption_and_qa":
        for a, b in zip(clips, clips[1:]):
            half = max(1, num_frames // 2) if num_frames else None
            fa, fb = frames[a], frames[b]
            if half:
                fa = [fa[i] for i in uniform_indices(len(fa), half)]
                fb = [fb[i] for i in uniform_indices(len(fb), half)]
            out.append(make_record(f"{video_key}/c{a:05d}-{b:05d}/order", "qa",
                                   [{"from": "human", "value": QA_ORDER},
                                    {"from": "gpt", "value": _first_sentence(captions[b])}],
                                   fa + fb, video_key, {"clip_index": [a, b], "question": "order"}))
    return out


def _read_layer(url: str) -> tuple[pa.Table, str]:
    """A layer's Parquet table and the sha256 of the bytes read (= the data version its asset recorded)."""
    import pyarrow.parquet as pq

    data = lio.read_bytes(url)
    return pq.read_table(pa.BufferReader(data)), hashlib.sha256(data).hexdigest()


def build_caption_dataset(storage: str, video_keys: list[str], kind: str, num_frames: int,
                          lineage: LineageTable | None = None, log=None) -> tuple[list[dict], list[dict]]:
    """Records + per-video input descriptions from the curated captions and clip frames of `video_keys`.
    Each used video's raw sha256 and the versions of the two files read go into `lineage`."""
    records, inputs = [], []
    for key in sorted(video_keys):
        cap_url = layout.layer_path(storage, "captions", key)
        fr_url = layout.layer_path(storage, "clip_frames", key)
        if not lio.exists(cap_url) or not lio.exists(fr_url):
            if log:
                log(f"[data] {key}: no captions or clip frames yet; skipped")
            continue
        try:
            (cap_table, cap_v), (fr_table, fr_v) = _read_layer(cap_url), _read_layer(fr_url)
            caps, frames = clip_caption_map(cap_table, cap_url), clip_frame_map(fr_table, fr_url)
        except InputError as e:
            if log:
                log(f"[data] {key}: {e}; skipped")
            continue
        recs = video_samples(key, caps, frames, kind, num_frames)
        records.extend(recs)
        versions = {CAPTION_LAYERS["captions"]: cap_v, CAPTION_LAYERS["clip_frames"]: fr_v}
        inputs.append({"video_key": key, "samples": len(recs), **versions})
        if lineage is not None:
            lineage.add(key, raw_sha256(storage, key), versions)
    return records, inputs


def build_stage_dataset(out_dir: str, stage, storage: str | None = None, video_keys: list[str] | None = None,
                        seed: int = 0, code_versions: dict[str, str | None] | None = None, log=None) -> dict:
    """Build and write one stage's dataset; returns its manifest. Raises InputError on zero samples.
    Caption datasets also write ``lineage.parquet`` (longvila.lineage_table; `code_versions` are the
    upstream assets' code versions), named with its sha256 under the manifest's ``lineage``."""
    kind = stage.data.kind
    inputs: list[dict] = []
    lineage = None
    if kind in ("captions", "caption_and_qa"):
        if storage is None:
            raise InputError(out_dir, "caption datasets need the storage root of the curated clips")
        lineage = LineageTable(out_dir.rstrip("/").rsplit("/", 1)[-1], dict(code_versions or {}))
        records, inputs = build_caption_dataset(storage, video_keys or [], kind, stage.num_frames, lineage, log)
    elif kind == "passkey":
        records = [make_record(r["sample_id"], "passkey", [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}],
                               meta={"passkey": r["passkey"], "depth": r["depth"]})
                   for r in passkey_records(stage.data.num_samples or 32, seed=seed)]
        inputs = [{"generator": "passkey", "seed": seed, "num_samples": len(records)}]
    elif kind in ("external", "long_text"):
        records = []
        for p in stage.data.paths:
            got = read_records(p, kind="external")
            records.extend(got)
            inputs.append({"path": p, "samples": len(got)})
    else:
        raise InputError(out_dir, f"data kind {kind!r} is not built here (stage 5 reads the long-video SFT dataset)")
    if len(records) < max(1, stage.data.min_samples):
        why = (f"{len(video_keys or [])} videos given, {len(inputs)} with captions and clip frames"
               if kind in ("captions", "caption_and_qa") else f"{len(inputs)} inputs")
        raise InputError(out_dir, f"stage {stage.name}: zero usable samples ({why}); nothing to train on")
    manifest = {
        "name": out_dir.rstrip("/").rsplit("/", 1)[-1], "stage": stage.name, "kind": kind,
        "num_frames": stage.num_frames, "inputs": inputs, "code_version": BUILD_VERSION,
        "video_keys": sorted({r["video_key"] for r in records if r["video_key"]}),
    }
    if lineage is not None:
        url, sha = lineage.write(out_dir)
        manifest["lineage"] = {"table": url.rsplit("/", 1)[-1], "sha256": sha, "videos": len(lineage.rows)}
    return write_dataset(out_dir, records, manifest)
