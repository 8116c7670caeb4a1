"""`longvila eval niah|videomme|caption` (no Dagster).

Examples::

    longvila eval niah --checkpoint data/lake/checkpoints/stage5_long_sft --frame-counts 8,16,32
    longvila eval niah --checkpoint CKPT --nproc 2            # MM-SP sharded prefill under torchrun
    longvila eval niah --checkpoint CKPT --needles-dir v_niah_needles/   # a user's needle set
    longvila eval videomme --checkpoint CKPT --make-fixture /tmp/vmme   # generate a fixture and run it
    longvila eval videomme --checkpoint CKPT --questions videomme/test.parquet --videos videos/ --subtitles subtitle/
    longvila eval caption --checkpoint CKPT --references refs.jsonl --judge local:PATH_TO_LLM

Outputs go to `--out` (default `<LONGVILA_STORAGE>/eval/<benchmark>/<checkpoint name>`); the summary
table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from longvila import layout
from longvila.errors import InputError
from longvila.progress import printer
from longvila.settings import Settings


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from exc


def _floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from exc


def _out(args: argparse.Namespace, benchmark: str) -> str:
    if args.out:
        return args.out
    p = Path(str(args.checkpoint).rstrip("/"))
    name = (p.parent.name if p.name == "final" else p.name) or "checkpoint"  # trainer export: <stage>/final
    return layout.eval_dir(Settings().storage, benchmark, name)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (or hub id) of a LongVILA model")
    p.add_argument("--out", default=None, help="output folder or fsspec URL")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="run a benchmark on a checkpoint (V-NIAH, VideoMME-format, caption score)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ev.add_subparsers(dest="benchmark", required=True)

    n = sub.add_parser("niah", help="video needle-in-a-haystack grid and heatmap")
    _common(n)
    n.add_argument("--video", default=None, help="haystack video (default: a synthetic one)")
    n.add_argument("--frames-parquet", default=None, help="haystack from a video_frames layer file")
    n.add_argument("--captions-parquet", default=None,
                   help="the haystack video's clip captions: frames annotated with on-screen text are left out")
    n.add_argument("--frame-counts", type=_ints, default=[8, 16, 32])
    n.add_argument("--depths", type=_floats, default=[0, 25, 50, 75, 100])
    n.add_argument("--needles", type=int, default=2)
    n.add_argument("--fps", type=float, default=1.0)
    n.add_argument("--frame-size", type=int, default=384)
    n.add_argument("--seed", type=int, default=0, help="needle render seed (built-in sets)")
    n.add_argument("--needle-set", choices=["digits", "text"], default="digits",
                   help="built-in needles: digits (readable by the smoke model) or words and numbers")
    n.add_argument("--needles-dir", default=None,
                   help="a needle set in the public V-NIAH layout: Parquet (image, question, answer) or a "
                        "folder of images with metadata.jsonl; replaces the built-in set")
    n.add_argument("--nproc", type=int, default=1, help=">1: MM-SP sharded prefill under torchrun")
    n.add_argument("--ulysses", type=int, default=None, help="Ulysses degree (default nproc / ring)")
    n.add_argument("--ring", type=int, default=1, help="ring degree")
    n.set_defaults(func=cmd_niah)

    v = sub.add_parser("videomme", help="VideoMME-format multiple choice")
    _common(v)
    v.add_argument("--questions", default=None, help="question file (parquet / json / jsonl)")
    v.add_argument("--videos", default=None, help="video folder")
    v.add_argument("--subtitles", default=None, help="subtitle folder (<videoID>.srt)")
    v.add_argument("--num-frames", type=int, default=8)
    v.add_argument("--subtitle-mode", choices=["auto", "never", "always"], default="auto")
    v.add_argument("--scoring", choices=["generate", "option_logits"], default="generate",
                   help="generate: free-form reply + letter extraction (official); option_logits: letter "
                        "with the highest first-token logit")
    v.add_argument("--max-new-tokens", type=int, default=8)
    v.add_argument("--subtitle-selection", choices=["frames", "all"], default="frames",
                   help="frames: only the cues shown at the sampled frames (VideoMME protocol); all: every cue")
    v.add_argument("--make-fixture", default=None, metavar="DIR",
                   help="generate a small VideoMME-format fixture in DIR and evaluate on it")
    v.set_defaults(func=cmd_videomme)

    c = sub.add_parser("caption", help="long-video caption score (LLM judge + similarity)")
    _common(c)
    c.add_argument("--references", default=None, help="JSON/JSONL: video_id, reference, video")
    c.add_argument("--videos", default=None, help="folder of <video_id>.mp4 when records lack 'video'")
    c.add_argument("--judge", default="none", help="none | local:PATH | openai:URL#MODEL")
    c.add_argument("--num-frames", type=int, default=8)
    c.add_argument("--retries", type=int, default=2)
    c.add_argument("--max-new-tokens", type=int, default=64, help="caption length budget")
    c.add_argument("--make-fixture", default=None, metavar="DIR",
                   help="generate fixture videos and reference captions in DIR and evaluate on them")
    c.set_defaults(func=cmd_caption)


def _progress(args):
    return None if args.quiet else printer(f"[eval {args.benchmark}] ")


def cmd_niah(args: argparse.Namespace) -> int:
    from .benchmarks import run_niah_benchmark, run_niah_sharded
    from .niah import NiahConfig

    cfg = NiahConfig(frame_counts=args.frame_counts, depths=args.depths, num_needles=args.needles,
                     fps=args.fps, frame_size=args.frame_size, seed=args.seed, needle_set=args.needle_set,
                     needles_dir=args.needles_dir)
    out = _out(args, "niah")
    try:
        if args.nproc > 1:
            res = run_niah_sharded(args.checkpoint, out, cfg, nproc=args.nproc, ulysses=args.ulysses,
                                   ring=args.ring, video=args.video, frames_parquet=args.frames_parquet,
                                   captions_parquet=args.captions_parquet)
        else:
            res = run_niah_benchmark(args.checkpoint, out, cfg, video=args.video,
                                     frames_parquet=args.frames_parquet, progress=_progress(args),
                                     captions_parquet=args.captions_parquet)
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    print(res.to_markdown())
    print(f"accuracy {res.accuracy:.4f} over {len(res.records)} samples ({res.method}); outputs in {out}")
    return 0


def cmd_videomme(args: argparse.Namespace) -> int:
    from .benchmarks import run_videomme_benchmark

    questions, videos, subs = args.questions, args.videos, args.subtitles
    if args.make_fixture:
        from .fixtures import make_videomme_fixture

        fx = make_videomme_fixture(args.make_fixture)
        questions, videos, subs = fx["parquet"], fx["video_dir"], fx["subtitle_dir"]
    if not questions or not videos:
        print("error: give --questions and --videos, or --make-fixture DIR")
        return 2
    out = _out(args, "videomme")
    try:
        res = run_videomme_benchmark(args.checkpoint, questions, videos, out, subtitle_dir=subs,
                                     num_frames=args.num_frames, subtitles=args.subtitle_mode,
                                     max_new_tokens=args.max_new_tokens, scoring=args.scoring,
                                     subtitle_selection=args.subtitle_selection,
                                     progress=_progress(args))
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    print(res.to_markdown())
    s = res.summary()
    print(f"errors: {s['errors']} questions; outputs in {out}")
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from .benchmarks import run_caption_benchmark

    refs = args.references
    if args.make_fixture:
        from longvila import io as lio

        from .fixtures import make_reference_captions, make_videomme_fixture

        fx = make_videomme_fixture(args.make_fixture, n_videos=3)
        refs = os.path.join(args.make_fixture, "references.jsonl")
        lio.write_text(refs, "".join(json.dumps(r) + "\n" for r in make_reference_captions(fx)))
    if not refs:
        print("error: give --references or --make-fixture DIR")
        return 2
    out = _out(args, "caption")
    try:
        res = run_caption_benchmark(args.checkpoint, refs, out, judge=args.judge, num_frames=args.num_frames,
                                    retries=args.retries, video_dir=args.videos,
                                    max_new_tokens=args.max_new_tokens, progress=_progress(args))
    except InputError as exc:
        print(f"error: {exc}")
        return 2
    print(res.to_markdown())
    print(f"outputs in {out}")
    return 0
