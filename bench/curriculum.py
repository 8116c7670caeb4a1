"""The learning experiment behind the smoke curriculum: does the tiny smoke model (176k parameters, random
weights) learn to read digits, to retrieve a passkey at 4x its context after the RoPE base is raised,
and to find a needle digit among 4x more frames than it was trained on?

    .venv/bin/python bench/curriculum.py                # the smoke recipe as it is (a few CPU minutes)
    .venv/bin/python bench/curriculum.py --sp 1         # stage 5 in one process instead of MM-SP (Ulysses 2)
    .venv/bin/python bench/curriculum.py --steps-scale 0.5   # every stage's steps halved (ablation)
    .venv/bin/python bench/curriculum.py --lake data/lake    # on the lake `make demo` curated (real decoding)

Standalone: no video decoding, no Dagster. It writes a small lake in the curation layer's formats (clip
captions with on-screen text as an annotation sidecar gives them, clip frames, video frames), with the
demo corpus's own shot renderer (`curation.demo_corpus`: a digit on a background whose hue drifts, and
the ffmpeg test patterns as distractor clips), then runs the real pipeline code from there on: the stage
datasets (`training.data.build.build_stage_dataset` with the smoke recipe's data options), the trainer
(`training.trainer.train`; stage 5 under torchrun with MM-SP unless --sp 1), V-NIAH on every stage's
checkpoint with held-out needles (render seed 1; training needles use seed 0) on the lake's text-free
haystack, and the passkey benchmark of stages 3 and 4 at 1x and 4x stage 3's context.

Prints the per-stage table and the CPU seconds of each stage; writes bench/out/curriculum.json (--out).
The threads per process are set with --threads (default 1, as measured in bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _jpeg(arr) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_lake(storage: str, videos: int, glyph_clips: int, seed: int = 0, size: int = 64) -> list[str]:
    """`videos` virtual lesson videos of `glyph_clips` digit clips and glyph_clips // 3 pattern clips
    (8 frames each, 2 s per clip), in the lake layout; returns their partition keys."""
    import pyarrow as pa

    from curation.demo_corpus import DISTRACTORS, PATTERN_CAPTION, _distractor_frames, _glyph_shot, _style_after
    from curation.glyphs import DIGITS
    from longvila import io as lio
    from longvila import layout

    keys = []
    for v in range(videos):
        rng = random.Random(seed * 1000 + v)
        key = f"lesson{v:02d}-{v:08x}"
        patterns = iter(_distractor_frames([rng.choice(DISTRACTORS) for _ in range(glyph_clips // 3)], 8, size, 8))
        caps, frames, last = [], [], None
        for i in range(glyph_clips + glyph_clips // 3):
            if i % 4 == 3:
                fr, cap, text = next(patterns), PATTERN_CAPTION, None
            else:
                text = rng.choice(DIGITS)
                fr, cap, last = _glyph_shot(text, 8, size, rng, _style_after(last, rng))
            caps.append({"clip_index": i, "start_s": 2.0 * i, "end_s": 2.0 * i + 2, "caption": cap, "ok": True,
                         "source": "annotation", "on_screen_text": text})
            frames += [{"clip_index": i, "frame_index_in_clip": j, "pts_s": 2.0 * i + j / 4, "jpeg": _jpeg(a)}
                       for j, a in enumerate(fr)]
        lio.write_parquet(pa.Table.from_pylist(caps), layout.layer_path(storage, "captions", key))
        lio.write_parquet(pa.Table.from_pylist(frames), layout.layer_path(storage, "clip_frames", key))
        one_per_s = [f for f in frames if f["frame_index_in_clip"] in (0, 4)]
        lio.write_parquet(pa.Table.from_pylist([{"frame_number": n, "pts_s": f["pts_s"], "jpeg": f["jpeg"]}
                                                for n, f in enumerate(one_per_s)]),
                          layout.layer_path(storage, "video_frames", key))
        keys.append(key)
    return keys


def _train_stage(recipe, n: int, data: list[str], out: Path, init: str | None, args) -> dict:
    stage = recipe.stage(n)
    steps = max(1, round(stage.max_steps * args.steps_scale))
    cmd = ["--recipe", recipe.source, "--stage", stage.name, "--data", *data, "--output-dir", str(out),
           "--metrics-out", str(out / "metrics.jsonl"), "--max-steps", str(steps), "--num-threads", str(args.threads),
           "--log-every", "60", *(["--init-from", init] if init else ["--profile", recipe.model_profile])]
    nproc = stage.sp_degree if args.sp > 1 else 1
    if nproc == 1 and stage.sp_degree > 1:
        cmd += ["--ulysses-degree", "1", "--ring-degree", "1"]
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run([sys.executable, *launch, "-m", "training.train", *cmd], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL if args.quiet else None)
    c1 = os.times()
    res = json.loads((out / "result.json").read_text())
    return {"steps": steps, "nproc": nproc, "final_loss": res["final_loss"], "wall_s": time.perf_counter() - t0,
            "cpu_s": (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system),
            "checkpoint": res["final_dir"]}


def _evaluate(stage_no: int, ckpt: str, storage: str, recipe) -> dict:
    from evaluation.niah import NiahConfig, haystack_from_frames_parquet, pick_lake_haystack, run_niah
    from evaluation.passkey import PasskeyConfig, run_passkey
    from evaluation.runner import load_runner
    from longvila import layout

    key = pick_lake_haystack(storage)
    cfg = NiahConfig(frame_counts=[1, 8, 16, 4 * recipe.stage(5).num_frames], depths=[0, 25, 50, 75, 100],
                     num_needles=10, frame_size=64, seed=1).validate()
    hay = haystack_from_frames_parquet(layout.layer_path(storage, "video_frames", key), max(cfg.frame_counts), 64,
                                       layout.layer_path(storage, "captions", key))
    runner = load_runner(ckpt)
    out = {"niah": run_niah(runner, hay, cfg).accuracy_by_frame_count(), "haystack_frames": len(hay)}
    if stage_no in (3, 4):
        base = recipe.stage(3).max_length
        pk = PasskeyConfig(lengths=[base, 4 * base], samples_per_cell=4,
                           digits=recipe.stage(4).data.options.passkey_digits)
        out["passkey"] = run_passkey(runner.model, runner.processor, pk).accuracy_by_length()
    return out


def run(args) -> dict:
    import torch

    from training.data.build import build_stage_dataset
    from training.recipes import load_recipe

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    work = Path(tempfile.mkdtemp(prefix="curriculum-"))
    if args.lake:  # an existing lake, e.g. the one `make demo` curated (data/lake)
        storage = args.lake
        keys = sorted(p.stem for p in Path(storage, "captions").glob("*.parquet"))
    else:
        storage = str(work / "lake")
        keys = write_lake(storage, args.videos, args.glyph_clips)
    rows, init = {}, None
    for n in range(1, 6):
        stage = recipe.stage(n)
        ds = str(work / "datasets" / f"stage{n}")
        # stage 5: its extra samples (retrieval) only; this lake has no long-video SFT records
        build_stage_dataset(ds, stage, storage=storage, video_keys=keys, seed=recipe.seed)
        row = _train_stage(recipe, n, [ds], work / f"stage{n}", init, args)
        init = row["checkpoint"]
        row.update(_evaluate(n, init, storage, recipe))
        rows[stage.name] = row
        print(f"[curriculum] {stage.name}: {row}", flush=True)
    return {"recipe": recipe.name, "videos": args.videos, "glyph_clips": args.glyph_clips, "sp": args.sp,
            "threads": args.threads, "steps_scale": args.steps_scale, "stages": rows,
            "load_average": os.getloadavg()[0]}


def table(result: dict) -> str:
    stages = result["stages"]
    frames = sorted({int(k) for r in stages.values() for k in r["niah"]})
    lengths = sorted({int(k) for r in stages.values() for k in r.get("passkey", {})})
    head = ["stage", "steps", "ranks", "final loss", "CPU s"] + [f"V-NIAH {f} fr" for f in frames] + [
        f"passkey {n} tok" for n in lengths]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in stages.items():
        pk = r.get("passkey", {})
        cells = [name, r["steps"], r["nproc"], f"{r['final_loss']:.3f}", f"{r['cpu_s']:.0f}"]
        cells += [f"{r['niah'][f]:.2f}" for f in frames] + [f"{pk[n]:.2f}" if n in pk else "-" for n in lengths]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="smoke")
    ap.add_argument("--sp", type=int, default=2, choices=[1, 2], help="stage 5 on MM-SP (2 ranks) or one process")
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--glyph-clips", type=int, default=60, help="digit clips per video")
    ap.add_argument("--lake", help="use this curated lake (e.g. data/lake after `make demo`) instead of writing one")
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "curriculum.json"), help="results file (JSON)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    print(table(result))
    cpu = sum(r["cpu_s"] for r in result["stages"].values())
    print(f"total wall {result['wall_s']:.0f} s, training CPU {cpu:.0f} s, load average {result['load_average']:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
