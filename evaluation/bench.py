"""Cost of V-NIAH scoring strategies on one grid (same model, same haystack, same process, same run).

    python -m evaluation.bench [--checkpoint CKPT] [--frame-counts 8,32,64] [--depths 0,50,100] [--repeats 2]

Strategies, all deciding "does greedy decoding start with the answer":
* tf_cache: teacher-forced greedy, one prefill per sample, haystack frame embeddings cached
  (the default `ModelRunner`);
* tf_nocache: the same, every sample re-encodes all of its frames;
* hf_generate: `model.generate` (KV cache) for len(answer tokens) new tokens, re-encoding frames;
* prefill_decode: greedy decoding by repeated full prefill (what the MM-SP runner must do for free
  generation, since SP has no KV cache), here at SP size 1.

Prints a table: seconds per sample and the ratio to tf_cache, and checks that all four strategies make
the same decision on every sample. Without --checkpoint a smoke checkpoint is created in a temp dir.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch

    from .niah import (NiahConfig, answers_match, assemble_frames, build_grid, default_needles, niah_prompt,
                       synthetic_haystack)
    from .runner import ModelRunner, load_runner
    from .sharded import ShardedRunner

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--frame-counts", default="8,32,64")
    ap.add_argument("--depths", default="0,50,100")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="niah-bench-") as wd:
        ckpt = args.checkpoint
        if not ckpt:
            from training.model import create_smoke_checkpoint

            ckpt = create_smoke_checkpoint(str(Path(wd) / "smoke"))
        cfg = NiahConfig(frame_counts=[int(x) for x in args.frame_counts.split(",")],
                         depths=[float(x) for x in args.depths.split(",")], num_needles=2, frame_size=64).validate()
        hay = synthetic_haystack(str(Path(wd) / "hay.mp4"), duration_s=max(cfg.frame_counts), frame_size=64)
        base = load_runner(ckpt)
        needles = default_needles(cfg.num_needles, size=(64, 64), seed=cfg.seed)
        samples = build_grid(cfg.frame_counts, cfg.depths, len(needles))
        tok = base.processor.tokenizer

        def tf(runner):
            def f(frames, prompt, answer):
                return answers_match(runner.greedy_continuation(frames, prompt, answer), answer, "exact")
            return f

        def gen(frames, prompt, answer):
            ids = tok.encode(answer, add_special_tokens=False)
            out = base.generate_ids(frames, prompt, len(ids))
            return answers_match(base.processor.decode(out, skip_special_tokens=True), answer, "exact")

        sp1 = ShardedRunner(base.model, base.processor, None)

        def prefill(frames, prompt, answer):
            ids = tok.encode(answer, add_special_tokens=False)
            out = sp1.generate_ids(frames, prompt, len(ids))
            return answers_match(base.processor.decode(out, skip_special_tokens=True), answer, "exact")

        strategies = {
            "tf_cache": tf(ModelRunner(base.model, base.processor, cache_frames=True)),
            "tf_nocache": tf(ModelRunner(base.model, base.processor, cache_frames=False)),
            "hf_generate": gen,
            "prefill_decode": prefill,
        }
        times: dict[str, list[float]] = {k: [] for k in strategies}
        decisions: dict[str, list[bool]] = {}
        for rep in range(args.repeats):
            for name, fn in strategies.items():
                t0 = time.perf_counter()
                d = []
                for s in samples:
                    n = needles[s.needle]
                    d.append(fn(assemble_frames(hay, n.image, s), niah_prompt(n.question), n.answer))
                times[name].append((time.perf_counter() - t0) / len(samples))
                decisions[name] = d
        ref = statistics.median(times["tf_cache"])
        agree = all(decisions[k] == decisions["tf_cache"] for k in decisions)
        print(f"V-NIAH scoring cost: {len(samples)} samples (frame counts {cfg.frame_counts}, depths "
              f"{cfg.depths}), median of {args.repeats} repeats, torch threads {torch.get_num_threads()}")
        print("| strategy | s / sample | ratio to tf_cache |")
        print("|---|---|---|")
        for name in strategies:
            m = statistics.median(times[name])
            print(f"| {name} | {m:.4f} | {m / ref:.2f}x |")
        print(f"all strategies make the same decision on every sample: {agree}")
        return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
