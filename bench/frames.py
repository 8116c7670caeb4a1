"""Uniform frame sampling benchmark: time to get 64 and 256 uniformly spaced frames of the 10-minute
640x360 H.264 video (bench/out/synthetic_10min.mp4, made by bench/shots.py or here).

    .venv/bin/python bench/frames.py [--repeats 3]

Methods (all return the same frame numbers: `curation.frames.video_sample_numbers(max_frames=k)`):
* ours, RGB arrays: ``curation.frames.decode_frames_at`` (one threaded PyAV decoder, keyframe-aware
  seeks) + conversion of each selected frame to a full-size RGB numpy array — the same output as decord;
* ours, end to end: ``sample_video_frames`` (also resizes to 384x384 and JPEG-encodes, i.e. the
  Parquet-ready product);
* decord 0.6 ``VideoReader(...).get_batch(indices)`` (full-size RGB);
* torchcodec ``VideoDecoder.get_frames_at`` if it imports (its PyPI wheels are built against CUDA torch
  and usually fail with the CPU torch: reported n/a with the reason);
* naive per-frame seeking with PyAV: for every frame, seek to the preceding keyframe and decode up to
  it (no reuse between frames);
* sequential: decode every frame with PyAV and keep the wanted ones.
Times are wall-clock seconds, best of ``--repeats`` rounds run round-robin (the machine is shared); CPU-s = CPU
seconds of the process (all threads), best of the runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.frames import decode_frames_at, sample_video_frames, video_sample_numbers  # noqa: E402
from curation.video import frame_index  # noqa: E402


def ours_rgb(path, nums, idx):
    return [f.to_ndarray(format="rgb24") for _, _, f in decode_frames_at(str(path), nums, index=idx)]


def ours_end_to_end(path, k):
    return sample_video_frames(str(path), fps=1000.0, max_frames=k, size=384)


def decord_batch(path, nums):
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
    return vr.get_batch(nums).asnumpy()


def torchcodec_batch(path, nums):
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(str(path), num_ffmpeg_threads=0)
    return dec.get_frames_at(indices=nums).data


def naive_seek(path, nums, idx):
    import av

    out = []
    keys = idx.keyframe_numbers()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for n in nums:
            kf = int(keys[np.searchsorted(keys, n, side="right") - 1])
            c.seek(int(idx.pts[kf]), stream=s, backward=True, any_frame=False)
            target = int(idx.pts[n])
            for fr in c.decode(s):
                if fr.pts is not None and fr.pts >= target:
                    out.append(fr.to_ndarray(format="rgb24"))
                    break
    return out


def sequential(path, nums):
    import av

    want, out = set(nums), []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        last = max(nums)
        for i, fr in enumerate(c.decode(s)):
            if i in want:
                out.append(fr.to_ndarray(format="rgb24"))
            if i >= last:
                break
    return out


def cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime


def best(fn, repeats):
    """(best wall seconds, best CPU seconds of this process incl. threads, result)."""
    t_best, c_best, res = float("inf"), float("inf"), None
    for _ in range(repeats):
        c0, t = cpu_seconds(), time.perf_counter()
        res = fn()
        t_best = min(t_best, time.perf_counter() - t)
        c_best = min(c_best, cpu_seconds() - c0)
    return t_best, c_best, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    from shots import ensure_long_video

    path, _ = ensure_long_video(Path(args.out))
    idx = frame_index(str(path))
    tc_error = None
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception as e:  # noqa: BLE001
        tc_error = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
    results: dict[tuple[str, int], float | str] = {}
    cpus: dict[tuple[str, int], float] = {}
    for k in (64, 256):
        nums = video_sample_numbers(idx, fps=1000.0, max_frames=k)
        assert len(nums) == k
        ref = None
        methods = [
            ("ours: decode_frames_at -> RGB arrays", lambda: ours_rgb(path, nums, idx)),
            ("ours: sample_video_frames (RGB + 384px + JPEG)", lambda: ours_end_to_end(path, k)),
            ("decord get_batch", lambda: decord_batch(path, nums)),
            ("torchcodec get_frames_at", lambda: torchcodec_batch(path, nums)),
            ("naive per-frame seek (PyAV)", lambda: naive_seek(path, nums, idx)),
            ("sequential decode, keep wanted (PyAV)", lambda: sequential(path, nums)),
        ]
        # round-robin: every repeat runs every method once, so load bursts from other users of the
        # machine hit all methods alike; the best run of each method is kept
        for r in range(args.repeats):
            for name, fn in methods:
                if name.startswith("torchcodec") and tc_error:
                    results[(name, k)] = f"n/a ({tc_error})"
                    continue
                print(f"[{k} frames, round {r + 1}] {name} ...", flush=True)
                sec, cpu, res = best(fn, 1)
                results[(name, k)] = min(sec, results.get((name, k), float("inf")))
                cpus[(name, k)] = min(cpu, cpus.get((name, k), float("inf")))
                if r:
                    continue
                if name.startswith("ours: decode"):
                    ref = res
                elif name.startswith(("decord", "naive", "sequential")) and ref is not None:
                    arr = np.asarray(res) if not isinstance(res, np.ndarray) else res
                    diff = np.abs(arr.astype(np.int16) - np.asarray(ref).astype(np.int16)).mean()
                    print(f"    mean |pixel difference| vs ours: {diff:.2f}", flush=True)
    names = []
    for name, _ in results:
        if name not in names:
            names.append(name)
    print()
    print(f"# Uniform frame sampling, 10-min 640x360 H.264 (15,000 frames, keyframes every <= 250 frames + at "
          f"cuts) — {platform.node()}, {os.cpu_count()} cores, load avg at end {os.getloadavg()[0]:.1f}; "
          f"best of {args.repeats}")
    print()
    print("| method | 64 frames (s) | 256 frames (s) | 64: x best peer | 256: x best peer | CPU-s 64 | CPU-s 256 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    peers = [n for n in names if not n.startswith("ours")]
    best_peer = {k: min((results[(n, k)] for n in peers if isinstance(results[(n, k)], float)), default=None)
                 for k in (64, 256)}
    for n in names:
        cells, ratios = [], []
        for k in (64, 256):
            v = results[(n, k)]
            cells.append(f"{v:.2f}" if isinstance(v, float) else v)
            ratios.append(f"{best_peer[k] / v:.2f}" if isinstance(v, float) and best_peer[k] else "-")
        cpu = [f"{cpus[(n, k)]:.2f}" if (n, k) in cpus else "-" for k in (64, 256)]
        print(f"| {n} | {cells[0]} | {cells[1]} | {ratios[0]} | {ratios[1]} | {cpu[0]} | {cpu[1]} |")
    print()
    print("x best peer = (fastest non-ours time) / (this time): > 1 means faster than every peer.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
