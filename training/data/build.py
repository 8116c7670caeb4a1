"""Building the per-stage datasets (library side of the `stageN_dataset` assets).

| stage | kind | source |
|---|---|---|
| 1 alignment, 2 pre-training | `captions` | clip captions + clip frames of the curated videos: a caption per clip |
| 3 short SFT | `caption_and_qa` | caption samples + short QA (what happens in a clip; order of two adjacent clips) |
| any | `external` | Parquet / webdataset shards named by path or URL (copied into the dataset as records) |
| 4 context extension | `passkey` | generated long-text passkey set (rendered to each phase's length when training) |
| 5 long SFT | `long_video_sft` | the curated long-video SFT dataset (read by the trainer directly) |

For stage 5 this module builds only the extra samples of its `data.options` (retrieval, passkey),
trained together with the long-video SFT dataset.

`data.options` (`training.data.options`) add to a caption kind: short QA on the clips' on-screen
text (from annotation sidecars: "What text is shown?" -> "7", with the clip's frames, plus
`frame_samples` single-frame ones), and keep the caption samples of a `caption_share` of the clips
whose captions come from `caption_source`; to any kind:
`passkey_samples` text-only passkey samples and `retrieval_samples` V-NIAH-style retrieval samples
(`training.data.retrieval`).

`build_stage_dataset(...)` writes `<out_dir>/samples-<hash>.parquet` and then `manifest.json` (one
versioned unit, see training.data.records) and returns the manifest: name, stage, kind, num_samples,
samples (file name), content_hash (its sha256), inputs (per video: key + data versions of the caption
and frame files, hashed from the bytes read), code_version, and for datasets read from the lake (caption
datasets, the haystack videos of retrieval samples) ``lineage`` (the per-video ``lineage.parquet``: raw
sha256 and layer versions, see longvila.lineage_table).
A dataset with zero usable samples raises `InputError` instead of writing anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable

import pyarrow as pa

from longvila import io as lio
from longvila import layout
from longvila.errors import InputError
from longvila.lineage_table import LineageTable, raw_sha256

from .options import DataOptions
from .passkey import passkey_records
from .records import make_record, read_records, write_dataset
from .stages import uniform_indices

BUILD_VERSION = "stage-data-v2"
# lake layer read by a dataset -> the asset that writes it (the lineage table's column names)
LAYER_ASSETS = {"captions": "clip_captions", "clip_frames": "clip_frames", "video_frames": "video_frames"}

CAPTION_PROMPTS = (
    "<video>\nDescribe this video clip.",
    "<video>\nWrite a short caption for the clip.",
    "<video>\nWhat does the clip show?",
)
QA_WHAT = "<video>\nWhat happens in this clip? Answer in one sentence."
QA_ORDER = "<video>\nThe video shows two scenes one after the other. What happens in the second scene?"
OCR_QUESTION = "<video>\nWhat text is shown? Answer with a single word or number."


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


def clip_text_map(table: pa.Table) -> dict[int, str]:
    """clip index -> on-screen text of the clip (annotated captions; rows without text skipped)."""
    if "on_screen_text" not in table.column_names:
        return {}
    ok = table.column("ok").to_pylist() if "ok" in table.column_names else [True] * table.num_rows
    return {int(i): t.strip() for i, t, good in zip(table.column("clip_index").to_pylist(),
                                                     table.column("on_screen_text").to_pylist(), ok)
            if good and isinstance(t, str) and t.strip()}


def _from_source(captions: dict[int, str], table: pa.Table, source: str) -> dict[int, str]:
    """The captions written by `source` ("annotation" / "model"; "any": all of them)."""
    if source == "any":
        return captions
    from curation.captioning.captioner import caption_sources

    by_clip = dict(zip((int(c) for c in table.column("clip_index").to_pylist()), caption_sources(table)))
    return {c: t for c, t in captions.items() if by_clip.get(c) == source}


def _resolved_source(storage: str, video_keys: list[str], source: str, log=None) -> str:
    """`prefer_annotation`: `annotation` when any of the videos has a caption from its sidecar, else every
    caption at a caption share of 1 (a corpus without sidecars still trains); other sources as given."""
    if source != "prefer_annotation":
        return source
    from curation.captioning.captioner import caption_sources

    for key in video_keys:
        url = layout.layer_path(storage, "captions", key)
        try:
            if lio.exists(url) and "annotation" in caption_sources(read_layer(url)[0]):
                return "annotation"
        except InputError:
            continue
    if log:
        log("[data] no video has annotation captions: the model's captions are used (prefer_annotation)")
    return "any"


def _in_share(sample_id: str, share: float) -> bool:
    """Stable pseudo-random choice of a `share` of the ids (a hash, not the order)."""
    if share >= 1.0:
        return True
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def text_samples(video_key: str, texts: dict[int, str], frames: dict[int, list[bytes]], num_frames: int,
                 frame_samples: int) -> list[dict]:
    """Short OCR QA of the clips with on-screen text: one with the clip's frames, `frame_samples` with one frame."""
    out = []
    for c in sorted(t for t in texts if frames.get(t)):
        fr = frames[c]
        sel = [fr[i] for i in uniform_indices(len(fr), num_frames)] if num_frames else fr
        conv = [{"from": "human", "value": OCR_QUESTION}, {"from": "gpt", "value": texts[c]}]
        out.append(make_record(f"{video_key}/c{c:05d}/text", "qa", conv, sel, video_key,
                               {"clip_index": c, "question": "text"}))
        for j in uniform_indices(len(fr), frame_samples):
            out.append(make_record(f"{video_key}/c{c:05d}/text-f{j}", "qa", conv, [fr[j]], video_key,
                                   {"clip_index": c, "question": "text", "frame": j}))
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


def read_layer(url: str) -> tuple[pa.Table, str]:
    """A layer's Parquet table and the sha256 of the bytes read (= the data version its asset recorded)."""
    import pyarrow.parquet as pq

    data = lio.read_bytes(url)
    return pq.read_table(pa.BufferReader(data)), hashlib.sha256(data).hexdigest()


def build_caption_dataset(storage: str, video_keys: list[str], kind: str, num_frames: int,
                          lineage: LineageTable | None = None, log=None,
                          options: DataOptions | None = None) -> tuple[list[dict], list[dict]]:
    """Records + per-video input descriptions from the curated captions and clip frames of `video_keys`.
    Each used video's raw sha256 and the versions of the two files read go into `lineage`."""
    opts = options or DataOptions()
    source = _resolved_source(storage, sorted(video_keys), opts.caption_source, log)
    if opts.caption_source == "prefer_annotation" and source == "any":
        opts = dataclasses.replace(opts, caption_share=1.0)  # the share assumes annotated on-screen text QA
    records, inputs = [], []
    for key in sorted(video_keys):
        cap_url = layout.layer_path(storage, "captions", key)
        fr_url = layout.layer_path(storage, "clip_frames", key)
        if not lio.exists(cap_url) or not lio.exists(fr_url):
            if log:
                log(f"[data] {key}: no captions or clip frames yet; skipped")
            continue
        try:
            (cap_table, cap_v), (fr_table, fr_v) = read_layer(cap_url), read_layer(fr_url)
            caps, frames = clip_caption_map(cap_table, cap_url), clip_frame_map(fr_table, fr_url)
        except InputError as e:
            if log:
                log(f"[data] {key}: {e}; skipped")
            continue
        shared = {c: t for c, t in _from_source(caps, cap_table, source).items()
                  if _in_share(f"{key}/c{c:05d}", opts.caption_share)}
        recs = video_samples(key, shared, frames, kind, num_frames)
        if kind == "caption_and_qa":
            recs += text_samples(key, clip_text_map(cap_table), frames, num_frames, opts.frame_samples)
        records.extend(recs)
        versions = {LAYER_ASSETS["captions"]: cap_v, LAYER_ASSETS["clip_frames"]: fr_v}
        inputs.append({"video_key": key, "samples": len(recs), **versions})
        if lineage is not None:
            lineage.add(key, raw_sha256(storage, key), versions)
    return records, inputs


def passkey_set(n: int, seed: int, opts: DataOptions) -> list[dict]:
    """`n` passkey records (parameters only; rendered to each phase's length when training) per `opts`."""
    return [make_record(r["sample_id"], "passkey", [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}],
                        meta={"passkey": r["passkey"], "depth": r["depth"], "fill": r["fill"]})
            for r in passkey_records(n, seed=seed, digits=opts.passkey_digits, min_fill=opts.passkey_min_fill)]


def _add_lineage(lineage: LineageTable, storage: str, key: str, layers: dict[str, str | None]) -> None:
    """`key`'s row gets the versions of `layers` (a new row when the video has none yet)."""
    for row in lineage.rows:
        if row["video_key"] == key:
            row.update(layers)
            return
    lineage.add(key, raw_sha256(storage, key), layers)


def _extra_samples(stage, storage: str | None, video_keys: list[str], seed: int, log,
                   lineage: LineageTable) -> tuple[list[dict], list[dict]]:
    """The passkey and retrieval samples a stage's `data.options` mix in (a passkey stage has its own); the
    haystack videos of retrieval samples go into `lineage` with the versions of the files read."""
    opts = stage.data.options
    records, inputs = [], []
    if opts.passkey_samples and stage.data.kind != "passkey":
        records += passkey_set(opts.passkey_samples, seed, opts)
        inputs.append({"generator": "passkey", "seed": seed, "num_samples": opts.passkey_samples})
    if opts.retrieval_samples:
        from .retrieval import haystack_from_lake, retrieval_records

        if storage is None:
            raise InputError(stage.name, "retrieval samples need the storage root (haystack frames)")
        haystack, hay_inputs = haystack_from_lake(storage, video_keys, opts.needle_size, log)
        if not haystack:
            raise InputError(stage.name, f"retrieval samples need haystack frames: none of {len(video_keys)} videos "
                                         "has video_frames outside clips with on-screen text")
        records += retrieval_records(haystack, opts, seed)
        for i in hay_inputs:
            _add_lineage(lineage, storage, i["video_key"], {k: v for k, v in i.items() if k in LAYER_ASSETS.values()})
        inputs += hay_inputs
        inputs.append({"generator": "retrieval", "seed": seed, "needle_seed": opts.needle_seed,
                       "num_samples": opts.retrieval_samples, "haystack_frames": len(haystack)})
    return records, inputs


def build_stage_dataset(out_dir: str, stage, storage: str | None = None, video_keys: list[str] | None = None,
                        seed: int = 0, code_versions: dict[str, str | None] | None = None, log=None) -> dict:
    """Build and write one stage's dataset; returns its manifest. Raises InputError on zero samples.
    Datasets read from the lake (caption datasets, retrieval samples' haystack) also write ``lineage.parquet``
    (longvila.lineage_table; `code_versions` are the upstream assets' code versions), named with its sha256
    under the manifest's ``lineage``."""
    kind = stage.data.kind
    opts = stage.data.options
    inputs: list[dict] = []
    lineage = LineageTable(out_dir.rstrip("/").rsplit("/", 1)[-1], dict(code_versions or {}))
    if kind in ("captions", "caption_and_qa"):
        if storage is None:
            raise InputError(out_dir, "caption datasets need the storage root of the curated clips")
        records, inputs = build_caption_dataset(storage, video_keys or [], kind, stage.num_frames, lineage, log,
                                                opts)
    elif kind == "passkey":
        records = passkey_set(stage.data.num_samples or 32, seed, opts)
        inputs = [{"generator": "passkey", "seed": seed, "num_samples": len(records)}]
    elif kind in ("external", "long_text"):
        records = []
        for p in stage.data.paths:
            got = read_records(p, kind="external")
            records.extend(got)
            inputs.append({"path": p, "samples": len(got)})
    elif kind == "long_video_sft" and (opts.retrieval_samples or opts.passkey_samples):
        records = []  # the SFT records stay in their own dataset; this one holds the extra samples
    else:
        raise InputError(out_dir, f"data kind {kind!r} is not built here (stage 5 reads the long-video SFT dataset)")
    extra, extra_inputs = _extra_samples(stage, storage, video_keys or [], seed, log, lineage)
    records += extra
    inputs += extra_inputs
    if len(records) < max(1, stage.data.min_samples):
        why = (f"{len(video_keys or [])} videos given, {len(inputs)} with captions and clip frames"
               if kind in ("captions", "caption_and_qa") else f"{len(inputs)} inputs")
        raise InputError(out_dir, f"stage {stage.name}: zero usable samples ({why}); nothing to train on")
    manifest = {
        "name": out_dir.rstrip("/").rsplit("/", 1)[-1], "stage": stage.name, "kind": kind,
        "num_frames": stage.num_frames, "inputs": inputs, "code_version": BUILD_VERSION,
        # the videos whose data the samples hold: captioned clips, and the haystack frames of retrieval samples
        "video_keys": sorted({r["video_key"] for r in records if r["video_key"]}
                             | {i["video_key"] for i in inputs if i.get("video_key") and i.get("haystack_frames")}),
    }
    if lineage.rows:
        url, sha = lineage.write(out_dir)
        manifest["lineage"] = {"table": url.rsplit("/", 1)[-1], "sha256": sha, "videos": len(lineage.rows)}
    return write_dataset(out_dir, records, manifest)
