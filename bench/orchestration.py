"""Curation lineage through Dagster vs. the same library calls made directly, on the sample corpus.

    .venv/bin/python bench/orchestration.py [--workdir DIR] [--repeat N]

For every video of `curation.synth.make_sample_corpus` it times
  * direct: probe -> shots -> clips -> clip frames -> video frames, plain function calls and atomic
    writes to a lake folder (what the assets do, minus Dagster);
  * dagster: one in-process run of the curation assets of that partition (asset checks included)
    against a real SQLite instance, as `longvila demo` does it;
and prints a table with the ratio dagster/direct (orchestration overhead) and the verdict on the
goal "curation lineage of the sample corpus < 10 minutes on 2 cores". Both paths run in the same
process, interleaved per video, so load from other processes affects them alike; best of --repeat.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_S = 600.0


def direct(path: str, lake_dir: Path, key: str, cfg) -> float:
    from assets.curation import table_to_parquet_bytes
    from curation.clips import make_clips
    from curation.frames import sample_clip_frames, sample_video_frames
    from curation.probe import probe_video
    from curation.schemas import clips_to_table, shots_to_table
    from curation.shots import detect_shots
    from longvila import io as lio
    from longvila import layout

    st = str(lake_dir)
    t0 = time.perf_counter()
    sha = lio.sha256_file(path)
    pr = probe_video(path, sha256=sha)
    lio.write_json(layout.layer_path(st, "probe", key), pr.to_dict())
    shots = detect_shots(path, detector=cfg.detector, **cfg.detector_options)
    lio.write_bytes(layout.layer_path(st, "shots", key), table_to_parquet_bytes(shots_to_table(shots)))
    clips = make_clips(shots, pr.fps, max_clip_s=cfg.max_clip_s, min_clip_s=cfg.min_clip_s)
    lio.write_bytes(layout.layer_path(st, "clips", key), table_to_parquet_bytes(clips_to_table(clips)))
    cf = sample_clip_frames(path, clips, frames_per_clip=cfg.frames_per_clip, size=cfg.frame_size,
                            jpeg_quality=cfg.jpeg_quality)
    lio.write_bytes(layout.layer_path(st, "clip_frames", key), table_to_parquet_bytes(cf))
    vf = sample_video_frames(path, fps=cfg.video_fps, max_frames=cfg.max_video_frames, size=cfg.frame_size,
                             jpeg_quality=cfg.jpeg_quality)
    lio.write_bytes(layout.layer_path(st, "video_frames", key), table_to_parquet_bytes(vf))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where to put corpus, lakes and the Dagster instance (default: temp)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per video and path; the best is kept")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_orch_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(work / "dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(exist_ok=True)

    from dagster import DagsterInstance, in_process_executor

    from assets import curation as curation_assets
    from curation.synth import make_sample_corpus
    from orchestration.definitions import build_defs
    from orchestration.demo import generate_corpus, run_batch
    from assets.resources import LakeResource
    from curation.config import CurationConfig
    from orchestration.sensors import register_videos

    src = work / "raw"
    t0 = time.perf_counter()
    info = generate_corpus(str(src), log=lambda m: None) if src.exists() else None
    if info is None:
        src.mkdir(parents=True)
        info = make_sample_corpus(str(src))
    gen_s = time.perf_counter() - t0

    lake = LakeResource(source=str(src), storage=str(work / "lake_dagster"))
    defs = build_defs(modules=[curation_assets], lake=lake, executor=in_process_executor)
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).group_name == curation_assets.GROUP]
    inst = DagsterInstance.get()
    t0 = time.perf_counter()
    scan = register_videos(inst, lake)
    scan_s = time.perf_counter() - t0
    cfg = CurationConfig.from_env()

    rows = []
    for key, entry in sorted(scan.manifest["videos"].items(), key=lambda kv: kv[1]["relpath"]):
        d_best, g_best, ok = float("inf"), float("inf"), True
        for _ in range(args.repeat):
            d_best = min(d_best, direct(entry["url"], work / "lake_direct", key, cfg))
            o = run_batch(defs, inst, keys, key, key)
            ok &= o.success
            g_best = min(g_best, o.seconds)
        dur = info.get(entry["relpath"], {}).get("duration_s") or 0.0
        rows.append((entry["relpath"], dur, d_best, g_best, ok))

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (shared with other work)")
    print(f"corpus generation {gen_s:.1f}s, sensor scan (hash {len(rows)} videos) {scan_s:.2f}s\n")
    print(f"| video | duration s | direct s | dagster s | dagster/direct | x real time (dagster) | ok |")
    print("|---|---|---|---|---|---|---|")
    for rel, dur, d, g, ok in rows:
        print(f"| {rel} | {dur:.1f} | {d:.2f} | {g:.2f} | {g / d:.2f} | {dur / g:.1f} | {ok} |")
    td = sum(r[2] for r in rows)
    tg = sum(r[3] for r in rows)
    tdur = sum(r[1] for r in rows)
    print(f"| **total** | {tdur:.1f} | {td:.2f} | {tg:.2f} | {tg / td:.2f} | {tdur / tg:.1f} | "
          f"{all(r[4] for r in rows)} |")
    verdict = "MET" if tg + scan_s < GOAL_S else "MISSED"
    print(f"\ngoal: curation lineage of the sample corpus < {GOAL_S:.0f}s on 2 cores -> {tg + scan_s:.1f}s: {verdict}")
    print(f"orchestration overhead per video: {(tg - td) / max(1, len(rows)):.2f}s "
          f"({len(keys)} assets + 5 checks per run)")
    return 0 if verdict == "MET" else 1


if __name__ == "__main__":
    sys.exit(main())
