"""Per-video curation at scale: shards of videos processed by a pool of workers (Ray or in-process).

A *shard* is an append-only list of N videos (webdataset / video2dataset style). `run_shard` curates every
video of a shard: probe -> shots -> clips -> clip frames and whole-video frames -> clip captions -> video
summary -> question-answer records, with the same library calls and the same lake layer files
(``probe/<key>.json``, ``shots/``, ``clips/``, ``clip_frames/``, ``video_frames/``, ``captions/``,
``summaries/``, ``instructions/``, byte-identical to what the per-video assets write), so the stage datasets
(the long-video SFT set of stage 5 included) and the lineage audit read them unchanged.

* **Workers.** ``engine="ray"``: a pool of Ray actors (`ray.util.ActorPool`), each loading the captioning
  model once in its constructor and captioning the clips of a whole batch of videos in one call (one
  batched ``generate`` / one burst of HTTP requests). ``engine="local"``: the same worker class in this
  process (tests, small corpora).
* **Content-hash skipping.** The shard manifest (``shards/<shard>/manifest.json``) holds one row per video:
  raw sha256, code versions, status, the data version of each layer file written. A video whose raw
  sha256 and code versions equal its previous row's (and whose previous row is ok) is skipped: a changed
  video re-runs only its own work.
* **Failure isolation.** An exception in one video's work becomes a ``quarantined`` row naming the file and
  the reason; the other videos of the shard (and of its batch) go on. Captioning errors of single clips
  are recorded in the captions table, and a summary or QA reply that is invalid in the video's record, as the
  per-video assets do. A model service that is down or misconfigured fails the shard run instead
  (`ServiceFailure`, retried by the asset's retry policy): it says nothing about the video.
* **Provenance.** Each row records what the per-video assets would record as data versions (sha256 of the
  bytes written), the raw sha256 and the code versions, so a shard answers lineage questions without
  the event log.

The manifest is written atomically once the shard is done; a crashed run leaves the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from curation.captioning.annotate import ServiceFailure
from longvila import io as lio
from longvila import layout
from longvila.cache import pinned_copy, snapshot

SHARDS_DIR = "shards"
OK, SKIPPED, QUARANTINED = "ok", "skipped", "quarantined"


@dataclass(frozen=True)
class VideoTask:
    key: str
    url: str  # a local path or fsspec URL of the raw video
    relpath: str = ""


@dataclass
class VideoRow:
    """One video's row of the shard manifest."""

    key: str
    status: str
    raw_sha256: Optional[str] = None
    code_versions: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # asset -> data version (sha256 of the layer file)
    error: Optional[str] = None
    seconds: float = 0.0


def shard_manifest_url(storage: str, shard: str) -> str:
    return lio.join(storage, SHARDS_DIR, shard, "manifest.json")


def read_shard_manifest(storage: str, shard: str, settings=None) -> dict:
    url = shard_manifest_url(storage, shard)
    return lio.read_json(url, settings) if lio.exists(url, settings) else {"shard": shard, "videos": {}}


def _write(url: str, data: bytes, settings) -> str:
    lio.write_bytes(url, data, settings)
    return hashlib.sha256(data).hexdigest()


SHARD_ASSETS = ("raw_video", "video_probe", "video_shots", "video_clips", "clip_frames", "video_frames",
                "clip_captions", "video_summary", "video_instructions")


def shard_code_versions(curation_cfg, captioning_cfg) -> dict[str, str]:
    """Code versions of the per-video work a shard does (the per-video assets' code versions)."""
    from curation.captioning.config import code_versions as caption_code_versions
    from curation.config import code_versions as curation_code_versions

    both = {**curation_code_versions(curation_cfg), **caption_code_versions(captioning_cfg)}
    return {k: both[k] for k in SHARD_ASSETS}


class ShardWorker:
    """Curates batches of videos; holds one captioner and one annotator (models loaded once per worker)."""

    def __init__(self, storage: str, curation_cfg=None, captioning_cfg=None, settings=None):
        from curation.captioning.config import CaptioningConfig, make_annotator, make_captioner
        from curation.config import CurationConfig

        self.storage, self.settings = storage, settings
        self.cfg = curation_cfg or CurationConfig.from_env()
        cap_cfg = captioning_cfg or CaptioningConfig.from_env()
        self.captioner, self.annotator = make_captioner(cap_cfg), make_annotator(cap_cfg)
        self.code_versions = shard_code_versions(self.cfg, cap_cfg)

    def run(self, tasks: Sequence[VideoTask], previous: dict) -> list[dict]:
        """Rows (as dicts) for `tasks`; `previous` maps key -> the video's previous row."""
        rows, staged = [], []
        for task in tasks:
            t0 = time.perf_counter()
            try:
                sha = snapshot(task.url, self.settings, suffix=_suffix(task)).sha256  # hashed while cached
                prev = previous.get(task.key) or {}
                if (prev.get("status") in (OK, SKIPPED) and prev.get("raw_sha256") == sha
                        and prev.get("code_versions") == self.code_versions):
                    rows.append({**prev, "status": SKIPPED, "seconds": round(time.perf_counter() - t0, 3)})
                    continue
                staged.append((task, sha, self._prepare(task, sha), t0))
            except ServiceFailure:
                raise
            except Exception as e:  # noqa: BLE001 - any failure of one video quarantines that video only
                rows.append(asdict(VideoRow(task.key, QUARANTINED, error=f"{task.url}: {type(e).__name__}: {e}",
                                            code_versions=self.code_versions,
                                            seconds=round(time.perf_counter() - t0, 3))))
        return rows + self._caption(staged)

    def _prepare(self, task: VideoTask, sha: str) -> dict:
        """probe, shots, clips, clip frames of one video, decoded from a local copy of exactly the bytes
        that were hashed (longvila.cache, also for s3:// sources): layer files written, versions returned."""
        with pinned_copy(task.url, sha, self.settings, suffix=_suffix(task)) as path:  # the bytes hashed
            return self._layers(task, sha, path)

    def _layers(self, task: VideoTask, sha: str, path: str) -> dict:
        from curation.clips import make_clips
        from curation.frames import sample_clip_frames, sample_video_frames
        from curation.probe import probe_video
        from curation.schemas import clips_to_table, shots_to_table
        from curation.shots import detect_shots

        cfg, st = self.cfg, self.storage
        probe = probe_video(path, sha256=sha)
        d = {**probe.to_dict(), "path": task.url, "relpath": task.relpath}
        out = {"video_probe": _write(layout.layer_path(st, "probe", task.key), _json_bytes(d), self.settings)}
        shots = detect_shots(path, detector=cfg.detector, **cfg.detector_options)
        out["video_shots"] = _write(layout.layer_path(st, "shots", task.key),
                                    lio.parquet_bytes(shots_to_table(shots)), self.settings)
        clips = make_clips(shots, probe.fps, max_clip_s=cfg.max_clip_s, min_clip_s=cfg.min_clip_s)
        out["video_clips"] = _write(layout.layer_path(st, "clips", task.key),
                                    lio.parquet_bytes(clips_to_table(clips)), self.settings)
        frames = sample_clip_frames(path, clips, frames_per_clip=cfg.frames_per_clip, size=cfg.frame_size,
                                    jpeg_quality=cfg.jpeg_quality)
        out["clip_frames"] = _write(layout.layer_path(st, "clip_frames", task.key), lio.parquet_bytes(frames),
                                    self.settings)
        whole = sample_video_frames(path, fps=cfg.video_fps, max_frames=cfg.max_video_frames, size=cfg.frame_size,
                                    jpeg_quality=cfg.jpeg_quality)
        out["video_frames"] = _write(layout.layer_path(st, "video_frames", task.key), lio.parquet_bytes(whole),
                                     self.settings)
        return {"clips": clips, "frames": frames, "outputs": out, "duration_s": float(probe.duration_s)}

    def _caption(self, staged: list) -> list[dict]:
        """Caption the clips of every staged video in one batched call; write each video's captions layer,
        then its summary and question-answer records."""
        from curation.captioning.captioner import clip_inputs, results_to_table

        inputs = [clip_inputs(p["clips"], p["frames"]) for _, _, p, _ in staged]
        flat = [c for group in inputs for c in group]
        results = self.captioner.caption_clips(flat) if flat else []
        rows, at = [], 0
        for (task, sha, prepared, t0), group in zip(staged, inputs):
            mine, at = results[at:at + len(group)], at + len(group)
            try:
                table = results_to_table(mine)
                version = _write(layout.layer_path(self.storage, "captions", task.key), lio.parquet_bytes(table),
                                 self.settings)
                annotations = self._annotate(task, prepared["duration_s"], table)
                row = VideoRow(task.key, OK, sha, self.code_versions,
                               {**prepared["outputs"], "clip_captions": version, **annotations})
            except ServiceFailure:
                raise
            except Exception as e:  # noqa: BLE001
                row = VideoRow(task.key, QUARANTINED, sha, self.code_versions, error=f"{task.url}: {e}")
            row.seconds = round(time.perf_counter() - t0, 3)
            rows.append(asdict(row))
        return rows


    def _annotate(self, task: VideoTask, duration_s: float, captions_table) -> dict:
        """Summary and question-answer records of one captioned video (the per-video assets' library calls and
        files); an invalid reply is recorded in the video's files, a failed service raises ServiceFailure."""
        from curation.captioning.annotate import (
            captions_from_table,
            instruction_records,
            instructions_report,
            raise_for_service,
            to_jsonl,
        )
        from curation.captioning.dataset import instructions_report_path

        st, key = self.storage, task.key
        captions = captions_from_table(captions_table)
        summary = self.annotator.summarize(key, captions, duration_s, num_clips=captions_table.num_rows)
        raise_for_service(summary, f"video summary of {task.url}")
        out = {"video_summary": _write(layout.layer_path(st, "summaries", key), _json_bytes(summary), self.settings)}
        qa = self.annotator.question_answers(key, captions, duration_s, summary.get("summary", ""))
        raise_for_service(qa, f"video instructions of {task.url}")
        records = instruction_records(key, summary, qa, video=task.url, duration_s=duration_s,
                                      frames_path=layout.layer_path(st, "video_frames", key))
        out["video_instructions"] = _write(layout.layer_path(st, "instructions", key), to_jsonl(records).encode(),
                                           self.settings)
        lio.write_json(instructions_report_path(st, key), instructions_report(qa, summary, records), self.settings)
        return out


def _json_bytes(obj) -> bytes:
    """JSON as the per-video assets write it (assets.common.write_json)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def _suffix(task: VideoTask) -> str:
    return os.path.splitext(task.relpath or task.url)[1]


def _batches(tasks: Sequence[VideoTask], size: int) -> list[list[VideoTask]]:
    return [list(tasks[i:i + size]) for i in range(0, len(tasks), size)]


def run_shard(shard: str, tasks: Sequence[VideoTask], storage: str, engine: str = "local", workers: int = 2,
              batch_size: int = 4, settings=None, worker_kwargs: Optional[dict] = None) -> dict:
    """Curate the videos of `shard` and write its manifest; returns the manifest."""
    previous = read_shard_manifest(storage, shard, settings)["videos"]
    batches = _batches(tasks, batch_size)
    kw = {"storage": storage, "settings": settings, **(worker_kwargs or {})}
    t0 = time.perf_counter()
    if engine == "local":
        worker = ShardWorker(**kw)
        rows = [r for b in batches for r in worker.run(b, previous)]
    elif engine == "ray":
        rows = _run_on_ray(batches, previous, kw, workers)
    else:
        raise ValueError(f"engine {engine!r}: choose local or ray")
    videos = {r["key"]: r for r in sorted(rows, key=lambda r: r["key"])}
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (OK, SKIPPED, QUARANTINED)}
    manifest = {"shard": shard, "engine": engine, "workers": workers if engine == "ray" else 1,
                "seconds": round(time.perf_counter() - t0, 3), "counts": counts, "videos": videos}
    lio.write_json(shard_manifest_url(storage, shard), manifest, settings)
    return manifest


def _run_on_ray(batches: list, previous: dict, kw: dict, workers: int) -> list[dict]:
    import ray
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=1)(ShardWorker)
    pool = ActorPool([actor.remote(**kw) for _ in range(max(1, min(workers, len(batches))))])
    rows: list[dict] = []
    for got in pool.map_unordered(lambda a, b: a.run.remote(b, {t.key: previous.get(t.key) for t in b}), batches):
        rows.extend(got)
    return rows


def shard_version(manifest: dict) -> str:
    """The data version of a curated shard: sha256 of each video's status, raw sha256 and outputs."""
    rows = {k: [v["status"] if v["status"] != SKIPPED else OK, v.get("raw_sha256"), v.get("outputs")]
            for k, v in sorted(manifest["videos"].items())}
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


__all__ = ["OK", "QUARANTINED", "SKIPPED", "ShardWorker", "VideoRow", "VideoTask", "read_shard_manifest",
           "run_shard", "shard_code_versions", "shard_manifest_url", "shard_version"]
