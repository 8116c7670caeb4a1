"""Videos per hour through the UI's path (daemon: sensor -> runs -> automation) vs the libraries called directly.

    .venv/bin/python bench/orchestration.py [--videos 6] [--seconds 20] [--rounds 1] [--workdir DIR]

Material: `--videos` synthetic videos of `--seconds` s (640x360, 25 fps, four shots from different lavfi
sources each, so no two videos share content), made once. Per round, interleaved:

* direct: the per-video chain (probe, shots, clips, clip frames, video frames, smoke-model clip
  captions, summary, question answers; every output written to a lake) called as plain functions in
  `--workers` processes (default: CPU count), videos handed out from a queue: the libraries at full
  speed on this machine, with the same parallelism as the run queue gives Dagster;
* daemon: a fresh project instance (`orchestration.instance.instance_yaml`: queued runs, warm-process
  launcher, pooled SQLite storage) and a real ``dagster-daemon run -w workspace.yaml``; when its new-video
  sensor has ticked once, every video lands in the source at once (an atomic rename, as an upload does),
  and the clock stops when the last per-video run has succeeded. Then one more video lands alone on the
  idle daemon: the time until its run has succeeded is the single-video latency;
* "daemon, Dagster's SQLite storage": the same with Dagster's default storage instead of
  `orchestration.storage.SqlitePooledStorage` (what the project used before), to show what the storage costs.

Both paths are timed warm, as a service that has been curating for a while runs: each direct worker
first curates a warm-up video (imports, model loads), and the daemon first curates one warm-up video
(its warm process learns the modules runs import). The cold start is printed separately.

Prints the table (videos/hour, ratio daemon/direct against the 0.8 target, latency against 30 s) with
the load average, then the profile of the first round's batch runs (`orchestration.timeline`: mean
phases from landing to success, mean step seconds beside the direct path's seconds for the same library
calls, events written per run), and writes bench/results/orchestration.md. Not measured: GPU captioning (the
smoke models run on CPU), S3 sources (the moto tests cover correctness, not speed), corpora above a
few videos (see issue 14 for scale).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_RATIO = 0.8
TARGET_LATENCY_S = 30.0
STAGES = ("raw_video", "video_probe", "video_shots", "video_clips", "clip_frames", "video_frames", "clip_captions",
          "video_summary", "video_instructions")
NOTES_MARKER = "<!-- notes: kept by bench/orchestration.py -->"
DAEMON_PATHS = {"daemon": True, "daemon, Dagster's SQLite storage": False}  # path -> pooled_sqlite


def make_corpus(dest: Path, n: int, seconds: float) -> list[Path]:
    from curation.synth import SOURCES, make_synthetic_video

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = dest / f"talk_{i:02d}.mp4"
        if not p.exists():
            shots = [(seconds / 4, SOURCES[(3 * i + j) % len(SOURCES)]) for j in range(4)]
            make_synthetic_video(str(p), shots, fps=25, size=(640, 360))
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------ direct
def _curate_one(path: str, storage: str, cfg, cap_cfg) -> dict[str, float]:
    """The per-video chain as plain library calls, outputs written atomically to the lake; returns the seconds
    of each stage, named after the asset that does the same work."""
    from curation.captioning.annotate import captions_from_table, instruction_records, to_jsonl
    from curation.captioning.captioner import caption_video
    from curation.captioning.config import make_annotator, make_captioner
    from curation.clips import make_clips
    from curation.frames import sample_clip_frames, sample_video_frames
    from curation.probe import probe_video
    from curation.schemas import clips_to_table, shots_to_table
    from curation.shots import detect_shots
    from longvila import io as lio
    from longvila.keys import partition_key_for
    from longvila.layout import layer_path

    key = partition_key_for(Path(path).name)
    times, clock = {}, [time.perf_counter()]

    def done(stage: str) -> None:
        now = time.perf_counter()
        times[stage], clock[0] = now - clock[0], now

    lio.sha256_file(path)  # raw_video's data version
    done("raw_video")
    probe = probe_video(path)
    lio.write_json(layer_path(storage, "probe", key), probe.to_dict())
    done("video_probe")
    shots = detect_shots(path, detector=cfg.detector, **cfg.detector_options)
    lio.write_parquet(shots_to_table(shots), layer_path(storage, "shots", key))
    done("video_shots")
    clips = make_clips(shots, probe.fps, max_clip_s=cfg.max_clip_s, min_clip_s=cfg.min_clip_s)
    lio.write_parquet(clips_to_table(clips), layer_path(storage, "clips", key))
    done("video_clips")
    frames = sample_clip_frames(path, clips, frames_per_clip=cfg.frames_per_clip, size=cfg.frame_size,
                                jpeg_quality=cfg.jpeg_quality)
    lio.write_parquet(frames, layer_path(storage, "clip_frames", key))
    done("clip_frames")
    lio.write_parquet(sample_video_frames(path, fps=cfg.video_fps, max_frames=cfg.max_video_frames,
                                          size=cfg.frame_size, jpeg_quality=cfg.jpeg_quality),
                      layer_path(storage, "video_frames", key))
    done("video_frames")
    caps = caption_video(make_captioner(cap_cfg), clips, frames)
    lio.write_parquet(caps, layer_path(storage, "captions", key))
    done("clip_captions")
    ann = make_annotator(cap_cfg)
    summary = ann.summarize(key, captions_from_table(caps), probe.duration_s, num_clips=caps.num_rows)
    lio.write_json(layer_path(storage, "summaries", key), summary)
    done("video_summary")
    qa = ann.question_answers(key, captions_from_table(caps), probe.duration_s, summary.get("summary", ""))
    records = instruction_records(key, summary, qa, video=path, frames_path=layer_path(storage, "video_frames", key),
                                  duration_s=probe.duration_s)
    lio.write_text(layer_path(storage, "instructions", key), to_jsonl(records))
    done("video_instructions")
    return times


def _direct_worker(queue, warmup: str, ready, storage: str, results) -> None:
    from curation.captioning.config import CaptioningConfig
    from curation.config import CurationConfig

    cfg, cap_cfg = CurationConfig.from_env(), CaptioningConfig.from_env()
    _curate_one(warmup, storage + "-warmup", cfg, cap_cfg)
    ready.release()
    while (path := queue.get()) is not None:
        results.put(_curate_one(path, storage, cfg, cap_cfg))


def run_direct(videos: list[Path], warmup: Path, storage: Path, workers: int) -> tuple[float, float, dict]:
    """(seconds for the batch once every worker is warm, seconds until they were warm, mean seconds per stage)."""
    ctx = mp.get_context("spawn")
    queue, ready, results = ctx.Queue(), ctx.Semaphore(0), ctx.Queue()
    t_cold = time.perf_counter()
    procs = [ctx.Process(target=_direct_worker, args=(queue, str(warmup), ready, str(storage), results))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = time.perf_counter()
    for v in videos:
        queue.put(str(v))
    for _ in procs:
        queue.put(None)
    stage_times = [results.get() for _ in videos]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"direct worker failed with exit code {p.exitcode}")
    batch = time.perf_counter() - t0
    return batch, t0 - t_cold, {k: sum(t[k] for t in stage_times) / len(stage_times) for k in stage_times[0]} \
        if stage_times else {}


# ------------------------------------------------------------------------------------------ daemon
def _wait_until_learned(daemon, timeout: float = 300) -> None:
    """Until the warm process has imported the modules the finished runs recorded (it does so when idle)."""
    learn_dir = daemon.home / "longvila-warm"

    def learned():
        state = learn_dir / "state"
        return (not any(learn_dir.glob("worker-*.txt")) and state.exists()
                and state.read_text().strip() == "complete")

    daemon.wait("warm process learning", learned, timeout)


def _finished_at(daemon, runs) -> float:
    return max(daemon.instance.get_run_record_by_id(r.run_id).end_time for r in runs)


def _profile(daemon, runs, landed: float) -> dict:
    """Phase and step means of the batch's runs (`orchestration.timeline`), counted from the landing."""
    from orchestration.timeline import phase_means, run_timeline, step_means

    timelines = [run_timeline(daemon.instance, r.run_id) for r in runs]
    return {"phases": phase_means(timelines, landed, STAGES), "steps": step_means(timelines),
            "events": sum(t["events"] for t in timelines) / len(timelines)}


def run_daemon(videos: list[Path], warmup: Path, extra: Path, work: Path,
               env: dict, pooled_sqlite: bool) -> tuple[float, float, float, dict]:
    """(seconds for the batch, seconds for one more video alone, seconds for the warm-up video, batch profile)."""
    from longvila.keys import partition_key_for
    from orchestration.harness import ProjectDaemon

    daemon = ProjectDaemon(work, env=env, pooled_sqlite=pooled_sqlite)
    try:
        daemon.wait_for_ticks("new_video_sensor", 1, after=0.0)
        t_cold = time.time()
        daemon.land(warmup)
        cold = _finished_at(daemon, daemon.wait_for_runs({partition_key_for(warmup.name)}, timeout=1800)) - t_cold
        _wait_until_learned(daemon)
        t0 = time.time()
        for v in videos:
            daemon.land(v)
        runs = daemon.wait_for_runs({partition_key_for(v.name) for v in videos}, timeout=3600)
        if any(r.status.value != "SUCCESS" for r in runs):
            raise RuntimeError(f"a run failed; see {daemon.log_path}")
        batch = _finished_at(daemon, runs) - t0
        profile = _profile(daemon, runs, t0)
        t1 = time.time()
        daemon.land(extra)
        latency = _finished_at(daemon, daemon.wait_for_runs({partition_key_for(extra.name)})) - t1
        return batch, latency, cold, profile
    finally:
        daemon.stop()


# ------------------------------------------------------------------------------------------ main
def _table(rows: list[dict], n: int, workers: int, load: tuple) -> str:
    """Rows per path and round; the ratio is taken per round (the paths ran back to back) and the best
    round is reported with all of them."""
    rounds = sorted({r["round"] for r in rows})
    by = {(r["path"], r["round"]): r for r in rows}
    lines = [f"{n} videos, {workers} workers / automated run slots, load average before "
             f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", "",
             "| path | round | batch wall s (warm) | videos/hour | cold start s | one video alone s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['round']} | {r['batch']:.1f} | {3600 * n / r['batch']:.0f} | {r['cold']:.1f} | "
              + (f"{r['latency']:.1f} |" if r["latency"] is not None else "- |") for r in rows]
    lines.append("")
    for path in DAEMON_PATHS:
        ratios = [by["direct", k]["batch"] / by[path, k]["batch"] for k in rounds]
        verdict = f" (target >= {TARGET_RATIO}: {'met' if max(ratios) >= TARGET_RATIO else 'missed'})"
        lines.append(f"throughput {path} / direct, per round: {', '.join(f'{x:.2f}' for x in ratios)}; best "
                     f"**{max(ratios):.2f}x**" + (verdict if path == "daemon" else ""))
    latency = min(r["latency"] for r in rows if r["path"] == "daemon")
    lines += [f"one video landed alone on the idle daemon, until its run succeeded: **{latency:.1f} s** "
              f"(target < {TARGET_LATENCY_S:.0f} s on a quiet machine: "
              f"{'met' if latency < TARGET_LATENCY_S else 'missed'})",
              "cold start: direct = worker start-up and its first video; daemon = the first video on a fresh "
              "instance (warm process start-up, nothing learned yet)"]
    return "\n".join(lines)


def _profile_tables(rows: list[dict], direct_stages: dict) -> str:
    """Mean phases of a batch run (from the landing) and mean step seconds beside the direct library calls,
    first round of each daemon path."""
    from orchestration.timeline import PHASES

    first = {path: next(r["profile"] for r in rows if r["path"] == path) for path in DAEMON_PATHS}
    head = " | ".join(first)
    lines = ["Mean per batch run, seconds (from the moment the videos landed; read from the instance's event log "
             "by `orchestration.timeline`):", "", f"| phase | {head} |", "|---|" + "---|" * len(first)]
    lines += [f"| {p} | " + " | ".join(f"{first[k]['phases'][p]:.2f}" for k in first) + " |" for p in PHASES]
    lines += ["| events written per run | " + " | ".join(f"{first[k]['events']:.0f}" for k in first) + " |", "",
              "Mean step seconds (2 runs at once) beside the same library calls in the direct path (2 workers):", "",
              f"| step | direct | {head} |", "|---|---|" + "---|" * len(first)]
    steps = list(STAGES) + sorted({s for f in first.values() for s in f["steps"]} - set(STAGES))
    lines += [f"| {s} | " + (f"{direct_stages[s]:.2f}" if s in direct_stages else "-") + " | "
              + " | ".join(f"{first[k]['steps'].get(s, 0.0):.2f}" for k in first) + " |" for s in steps]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "orchestration"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "orchestration.md"))
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work / "runs", ignore_errors=True)
    corpus = make_corpus(work / "corpus", args.videos + 2, args.seconds)
    videos, warmup, extra = corpus[:-2], corpus[-2], corpus[-1]
    env = {**os.environ, "LONGVILA_MODELS_DIR": str(work / "models"), "LONGVILA_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": str(REPO)}
    os.environ.update({k: env[k] for k in ("LONGVILA_MODELS_DIR", "LONGVILA_CACHE_DIR")})
    load = os.getloadavg()
    run_direct([], warmup, work / "runs" / "models", 1)  # builds the smoke models once, for both paths
    rows, direct_stages = [], {}
    for r in range(args.rounds):
        batch, cold, stages = run_direct(videos, warmup, work / "runs" / f"direct{r}", args.workers)
        direct_stages = direct_stages or stages
        rows.append({"path": "direct", "round": r, "batch": batch, "cold": cold, "latency": None})
        print(f"direct round {r}: {batch:.1f} s (cold start {cold:.1f} s)", flush=True)
        for i, (path, pooled) in enumerate(DAEMON_PATHS.items()):
            batch, latency, cold, profile = run_daemon(videos, warmup, extra, work / "runs" / f"daemon{r}-{i}", env,
                                                       pooled)
            rows.append({"path": path, "round": r, "batch": batch, "cold": cold, "latency": latency,
                         "profile": profile})
            print(f"{path} round {r}: {batch:.1f} s (cold start {cold:.1f} s), single video {latency:.1f} s",
                  flush=True)
    table = _table(rows, len(videos), args.workers, load) + "\n\n" + _profile_tables(rows, direct_stages)
    print("\n" + table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = out.read_text().partition(NOTES_MARKER)[2] if out.exists() else ""  # hand-written notes are kept
    out.write_text(f"# bench/orchestration.py\n\n{args.videos} x {args.seconds:g}-s videos\n\n{table}\n"
                   + (f"\n{NOTES_MARKER}{notes}" if notes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
