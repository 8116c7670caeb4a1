"""`longvila shots` and `longvila probe`: the curation library from the command line, without Dagster.

    longvila shots VIDEO [--detector fast|transnetv2|content|adaptive] [--json] [--timeout-s S]
                         [--clips] [--max-clip-s 10] [--min-clip-s 1]
    longvila probe VIDEO [--json]

Exit status 0 on success, 2 when the video is unusable (the reason is printed on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys

from longvila.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("shots", help="shot boundaries of a local video (start/end frame and seconds)",
                              description="Detect shots in VIDEO and print start/end frame and seconds per shot.")
    p.add_argument("video", help="path of a local video file")
    p.add_argument("--detector", default="fast", choices=["fast", "transnetv2", "content", "adaptive"],
                   help="shot detector (default: fast)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout-s", type=float, default=None, help="give up (exit 2) after this many seconds")
    p.add_argument("--clips", action="store_true", help="also cut the shots into clips and print them")
    p.add_argument("--max-clip-s", type=float, default=10.0, help="longest clip in seconds (with --clips)")
    p.add_argument("--min-clip-s", type=float, default=1.0, help="shortest clip in seconds (with --clips)")
    p.set_defaults(func=_cmd_shots)

    q = subparsers.add_parser("probe", help="container, codec, duration, fps, frames, size of a local video")
    q.add_argument("video", help="path of a local video file")
    q.add_argument("--json", action="store_true", help="print JSON instead of key: value lines")
    q.set_defaults(func=_cmd_probe)


def _cmd_shots(args) -> int:
    from .shots import code_version, detect_shots

    try:
        shots = detect_shots(args.video, detector=args.detector, timeout_s=args.timeout_s)
        clips = None
        if args.clips:
            from .clips import make_clips
            from .probe import probe_video

            fps = probe_video(args.video, sha256="-").fps
            clips = make_clips(shots, fps, max_clip_s=args.max_clip_s, min_clip_s=args.min_clip_s)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        out = {"video": args.video, "detector": args.detector, "code_version": code_version(args.detector),
               "frame_count": shots[-1].end_frame, "shots": [s.to_dict() for s in shots]}
        if clips is not None:
            out["clips"] = [c.to_dict() for c in clips]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"# {args.video}: {len(shots)} shots, {shots[-1].end_frame} frames ({code_version(args.detector)})")
    print(f"{'shot':>5} {'start_frame':>11} {'end_frame':>9} {'start_s':>10} {'end_s':>10}  transition in (frames)")
    for s in shots:
        gradual = s.transition_kind not in ("none", "cut")
        span = f" [{s.transition_start_frame}, {s.transition_end_frame})" if gradual else ""
        print(f"{s.index:>5} {s.start_frame:>11} {s.end_frame:>9} {s.start_s:>10.3f} {s.end_s:>10.3f}  "
              f"{s.transition_kind}{span}")
    if clips is not None:
        print(f"# {len(clips)} clips (max {args.max_clip_s} s, min {args.min_clip_s} s)")
        print(f"{'clip':>5} {'shot':>5} {'start_frame':>11} {'end_frame':>9} {'start_s':>10} {'end_s':>10}")
        for c in clips:
            print(f"{c.index:>5} {c.shot_index:>5} {c.start_frame:>11} {c.end_frame:>9} {c.start_s:>10.3f} "
                  f"{c.end_s:>10.3f}")
    return 0


def _cmd_probe(args) -> int:
    from .probe import probe_video

    try:
        res = probe_video(args.video)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
    else:
        for k, v in res.to_dict().items():
            print(f"{k}: {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m curation.cli shots VIDEO``) that needs no other area's modules."""
    parser = argparse.ArgumentParser(prog="longvila-curation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
