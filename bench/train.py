"""Training throughput: our trainer vs a plain Hugging Face training loop, and smoke-stage wall times.

    .venv/bin/python bench/train.py            # full (a few minutes on 2 cores)
    .venv/bin/python bench/train.py --quick    # fewer steps/repeats

1. Tokens/s at SP=1, one process: `training.trainer.train` (recipe smoke, stage 3: everything trainable,
   packed caption/QA rows with frames) vs a plain loop over the SAME packed rows and model
   (`model(**batch).loss.backward(); clip; AdamW.step(); zero_grad()`), both timed per optimiser step
   (batch collation included). The model is the smoke architecture widened (hidden 256, 4 layers) so
   the math, not Python, dominates. The two are interleaved (A B A B ...) and medians are compared,
   because the machine is shared.
2. Wall time of each of the five smoke-recipe stages (recipe steps, `python -m training.train`;
   stage 5 under torchrun with Ulysses 2), process start to exit.

Prints a table and writes bench/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_lake(root: Path, n_videos: int = 4) -> str:
    import hashlib
    import io

    import pyarrow as pa
    from PIL import Image

    from longvila import io as lio
    from longvila import layout

    storage = str(root / "lake")
    words = "red green blue yellow car cat dog ball tree street table door park lake boat".split()
    for v in range(n_videos):
        key = f"bench{v}-{v:08x}"
        caps = [f"A {words[(v + c) % 15]} {words[(v * 3 + c) % 15]} moves across the {words[(c * 7) % 15]}. "
                f"Then a {words[(v + 2 * c) % 15]} appears near the {words[(v + 5) % 15]}." for c in range(6)]
        lio.write_parquet(pa.table({"clip_index": pa.array(range(6), pa.int32()), "caption": caps,
                                    "source": ["annotation"] * 6}),
                          layout.layer_path(storage, "captions", key))
        rows = []
        for c in range(6):
            for f in range(4):
                h = hashlib.sha256(f"{v}-{c}-{f}".encode()).digest()
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (h[0], h[1], h[2])).save(buf, format="JPEG")
                rows.append((c, f, buf.getvalue()))
        lio.write_parquet(pa.table({"clip_index": pa.array([r[0] for r in rows], pa.int32()),
                                    "frame_index_in_clip": pa.array([r[1] for r in rows], pa.int32()),
                                    "jpeg": pa.array([r[2] for r in rows], pa.binary())}),
                          layout.layer_path(storage, "clip_frames", key))
    return storage


def build_datasets(storage: str, root: Path) -> dict[int, str]:
    import json as _json

    from training.data.build import build_stage_dataset
    from training.data.records import make_record, read_records, write_dataset
    from training.recipes import load_recipe

    r = load_recipe("smoke")
    keys = sorted(p.stem for p in (Path(storage) / "captions").glob("*.parquet"))
    out = {}
    for n in (1, 2, 3, 4):
        d = str(root / f"stage{n}")
        build_stage_dataset(d, r.stage(n), storage=storage, video_keys=keys)
        out[n] = d
    # stage 5: long-video samples (16 frames each) in the stage-dataset format
    recs = []
    for rec in read_records(out[3]):
        conv = _json.loads(rec["conversations"])
        recs.append(make_record(rec["sample_id"] + "/long", "long_video_sft", conv, list(rec["frames"]) * 4,
                                rec["video_key"]))
    d5 = str(root / "stage5")
    write_dataset(d5, recs, {"name": "stage5", "stage": "stage5_long_sft"})
    out[5] = d5
    return out


def make_bench_checkpoint(path: Path) -> str:
    from training.model.processing import build_processor
    from training.model.profiles import build_model, get_profile

    prof = get_profile("smoke")
    cfg = prof.config(text={"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
                            "num_attention_heads": 8, "num_key_value_heads": 4})
    model = build_model(cfg, seed=0)
    proc = build_processor(cfg.tokens_per_frame, cfg.vision_config.image_size, prof.tokenizer_vocab)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return str(path)


def plain_hf_loop(ckpt: str, data: str, steps: int, micro: int, seed: int = 0) -> list[dict]:
    """The baseline: the same packed rows, the same model, a bare PyTorch/HF loop."""
    import torch

    from training.data import build_rows, collate_rows, read_records
    from training.data.stages import StepOrder
    from training.model.profiles import load_checkpoint
    from training.recipes import load_recipe

    st = load_recipe("smoke").stage(3)
    torch.manual_seed(seed)
    model, proc = load_checkpoint(ckpt)
    model.train()
    rows, _ = build_rows(read_records(data), proc, st.max_length, st.num_frames, packing=True)
    order = StepOrder(len(rows), seed, 1, micro, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=st.optimizer.lr, betas=(0.9, 0.95))
    out = []
    for step in range(steps):
        t0 = time.perf_counter()
        b = collate_rows([rows[i] for i in order.micro_batches(step, 0)[0]], proc.pad_token_id)
        loss = model(input_ids=b["input_ids"], labels=b["labels"], pixel_values=b["pixel_values"],
                     segment_ids=b["segment_ids"], position_ids=b["position_ids"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        out.append({"step": step + 1, "loss": float(loss), "tokens": int((b["segment_ids"] >= 0).sum()), "seconds": dt})
    return out


def our_trainer(ckpt: str, data: str, steps: int, micro: int, out_dir: str, seed: int = 0) -> list[dict]:
    from training.metrics import read_metrics
    from training.trainer import TrainArgs, train

    m = os.path.join(out_dir, "m.jsonl")
    train(TrainArgs(recipe="smoke", stage="3", init_from=ckpt, data=[data], max_steps=steps, micro_batch_size=micro,
                    grad_accum=1, checkpoint_every=0, export=False, output_dir=out_dir, metrics_out=m, seed=seed,
                    log_every=1e9))
    return read_metrics(m)


def tps(recs: list[dict], skip: int) -> float:
    r = recs[skip:]
    return sum(x["tokens"] for x in r) / sum(x["seconds"] for x in r)


def stage_walls(datasets: dict[int, str], root: Path) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = []
    prev = None
    names = ["stage1_alignment", "stage2_pretraining", "stage3_short_sft", "stage4_context_extension",
             "stage5_long_sft"]
    for n, name in enumerate(names, start=1):
        od = root / "stages" / name
        args = ["-m", "training.train", "--recipe", "smoke", "--stage", name, "--data", datasets[n],
                "--output-dir", str(od), "--metrics-out", str(od / "m.jsonl"), "--log-every", "1e9"]
        if prev:
            args += ["--init-from", str(prev)]
        if n == 5:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
        else:
            cmd = [sys.executable, *args]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            errors = [line for line in (p.stdout + p.stderr).splitlines() if "error" in line.lower()]
            raise RuntimeError(f"{name} failed: " + " / ".join(errors)[:3000])
        res = json.loads((od / "result.json").read_text())
        out.append({"stage": name, "steps": res["steps"], "ranks": res["world_size"], "wall_s": wall,
                    "train_loop_s": res["loop_seconds"], "final_loss": res["final_loss"]})
        prev = od / "final"
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--no-stages", action="store_true")
    a = ap.parse_args()
    steps = a.steps or (8 if a.quick else 20)
    repeats = a.repeats or (2 if a.quick else 4)
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        storage = make_lake(root)
        datasets = build_datasets(storage, root)
        ckpt = make_bench_checkpoint(root / "ckpt")
        ours, base, loss_match = [], [], True
        for i in range(repeats):
            b = plain_hf_loop(ckpt, datasets[3], steps, a.micro)
            o = our_trainer(ckpt, datasets[3], steps, a.micro, str(root / f"run{i}"))
            base.append(tps(b, skip=2))
            ours.append(tps(o, skip=2))
            # same model, rows and order: the first step (before any update; schedules differ) must agree
            loss_match &= abs(o[0]["loss"] - b[0]["loss"]) < 1e-5 * max(1.0, abs(b[0]["loss"]))
            print(f"repeat {i + 1}/{repeats}: plain loop {base[-1]:.0f} tok/s, trainer {ours[-1]:.0f} tok/s",
                  flush=True)
        mb, mo = statistics.median(base), statistics.median(ours)
        overhead = (mb - mo) / mb * 100
        stages = [] if a.no_stages else stage_walls(datasets, root)
    load = os.getloadavg()
    print()
    print("| measurement | plain HF loop | our trainer | ratio (ours/plain) |")
    print("|---|---|---|---|")
    print(f"| tokens/s, SP=1, 1 process, micro-batch {a.micro}, {steps} steps x {repeats} (median) | {mb:.0f} "
          f"| {mo:.0f} | {mo / mb:.3f} |")
    print(f"\noverhead {overhead:+.1f}% (target <= 5%): {'MET' if overhead <= 5 else 'MISSED'}; "
          f"first-step losses identical (same model, data, order): {loss_match}")
    if stages:
        print("\n| smoke stage | steps | ranks | wall s (process) | train loop s | final loss |")
        print("|---|---|---|---|---|---|")
        for s in stages:
            print(f"| {s['stage']} | {s['steps']} | {s['ranks']} | {s['wall_s']:.1f} | {s['train_loop_s']:.2f} "
                  f"| {s['final_loss']:.3f} |")
        print(f"| total | | | {sum(s['wall_s'] for s in stages):.1f} | | |")
    print(f"\nload average during the run: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 cores, shared)")
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps({"plain_tps": base, "trainer_tps": ours, "overhead_pct": overhead,
                                                "loss_match": loss_match, "stages": stages, "loadavg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
