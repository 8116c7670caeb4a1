"""Issue 11 in the trainer: checkpoints belong to a run identity, one writer per stage directory, stage
datasets as one verified versioned unit, immutable exports behind a `final` pointer."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
SMOKE = ["--profile", "smoke", "--max-steps", "6", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--resume"]


def losses(path) -> list[float]:
    return [r["loss"] for r in read_metrics(path)]


@pytest.mark.slow
def test_changed_identity_keeps_its_own_checkpoints_and_resumes_them(tmp_path, run_train):
    """The reproduction of issue 11: seed 0 for 6 steps, seed 1 killed after step 5, seed 1 again. Before,
    pruning kept seed 0's higher step numbers, and the re-run found only those and started at step 0."""
    out = tmp_path / "stage"
    run_train(SMOKE + ["--seed", "0", "--output-dir", str(out), "--metrics-out", str(tmp_path / "a.jsonl")])
    first_export = (out / "final").resolve()
    p = run_train(SMOKE + ["--seed", "1", "--output-dir", str(out), "--metrics-out", str(tmp_path / "b.jsonl"),
                           "--kill-after-step", "5"], check=False)
    assert p.returncode != 0
    run_train(SMOKE + ["--seed", "1", "--output-dir", str(out), "--metrics-out", str(tmp_path / "b.jsonl")])
    res = json.loads((out / "result.json").read_text())
    assert res["start_step"] == 5
    run_train(SMOKE + ["--seed", "1", "--output-dir", str(tmp_path / "ref"),
                       "--metrics-out", str(tmp_path / "r.jsonl")])
    assert losses(tmp_path / "b.jsonl") == losses(tmp_path / "r.jsonl")  # bit-identical to an uninterrupted run
    runs = {r.name: sorted(d.name for d in (r / "checkpoints").iterdir()) for r in (out / "runs").iterdir()}
    assert sorted(runs.values()) == [["step-000005", "step-000006"]] * 2  # neither run pruned the other's
    # the first run's export is still there, immutable, although `final` now points at the second one
    assert first_export.exists() and (out / "final").resolve() != first_export
    assert json.loads((out / "result.json").read_text())["final_dir"] == str((out / "final").resolve())
    # back to seed 0: its own newest checkpoint (step 6) is found, nothing left to train
    run_train(SMOKE + ["--seed", "0", "--output-dir", str(out), "--metrics-out", str(tmp_path / "a.jsonl")])
    res = json.loads((out / "result.json").read_text())
    assert res["start_step"] == 6 and Path(res["final_dir"]) == first_export


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_two_trainers_on_one_directory(tmp_path):
    """The second trainer fails at once naming the first (pid, host); with --lock-timeout it waits."""
    out = tmp_path / "stage"
    cmd = [sys.executable, "-m", "training.train", "--profile", "smoke", "--output-dir", str(out), "--no-export",
           "--resume", "--checkpoint-every", "1", "--log-every", "0"]
    first = subprocess.Popen(cmd + ["--max-steps", "400"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # wait until the first trainer is inside its loop (holding the lock)
            if line.startswith("[train] step 1/"):
                break
        t0 = time.monotonic()
        second = subprocess.run(cmd + ["--max-steps", "2"], cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another run is writing here: pid {first.pid} on host" in second.stderr
        assert "training smoke, 1 ranks" in second.stderr
        assert time.monotonic() - t0 < 60
        assert first.poll() is None  # the first one was not disturbed
        waiter = subprocess.Popen(cmd + ["--max-steps", "2", "--lock-timeout", "300"], cwd=REPO, env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert waiter.poll() is None  # waiting for the lock
    finally:
        first.kill()
        first.wait()
    assert waiter.wait(timeout=300) == 0  # took over after the holder died
    assert json.loads((out / "result.json").read_text())["steps"] == 2


def test_stage_dataset_is_one_verified_unit(tmp_path, lake):
    from longvila.errors import InputError
    from training.data.build import build_stage_dataset
    from training.data.records import read_versioned
    from training.recipes import load_recipe

    st = load_recipe("smoke").stage(1)
    out = tmp_path / "ds"
    m1 = build_stage_dataset(str(out), st, storage=lake, video_keys=["video_a-00000001"])
    assert m1["samples"] == f"samples-{m1['content_hash'][:16]}.parquet"
    recs, version = read_versioned(str(out))
    assert version == m1["content_hash"] and len(recs) == m1["num_samples"]
    m2 = build_stage_dataset(str(out), st, storage=lake, video_keys=["video_a-00000001", "video_b-00000002"])
    m3 = build_stage_dataset(str(out), st, storage=lake, video_keys=["video_b-00000002"])
    # the committed file and the one before it (a reader may hold the previous manifest); older ones go
    assert sorted(p.name for p in out.glob("samples*")) == sorted([m2["samples"], m3["samples"]])
    assert read_versioned(str(out))[1] == m3["content_hash"]
    # samples that do not match the manifest are refused, naming the file
    f = out / m3["samples"]
    f.write_bytes(f.read_bytes()[:-3] + b"xyz")
    with pytest.raises(InputError, match=rf"{m3['samples']}: does not match the manifest's content_hash"):
        read_versioned(str(out))


def test_long_video_dataset_version_is_recorded(tmp_path):
    """Issue 12: stage 5 recorded dataset_versions [null] (manifest key sha256 vs content_hash)."""
    from curation.captioning.dataset import build_long_video_sft
    from longvila import io as lio
    from longvila.layout import dataset_dir, layer_path
    from training.data.records import read_versioned

    storage = str(tmp_path / "lake")
    conv = [{"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "A cat jumps."}]
    lio.write_text(layer_path(storage, "instructions", "a-00000001"),
                   json.dumps({"id": "a-0", "video_key": "a-00000001", "conversations": conv}) + "\n")
    m = build_long_video_sft(storage, ["a-00000001"])
    recs, version = read_versioned(dataset_dir(storage, "long_video_sft"))
    assert version == m["content_hash"] and len(version) == 64 and len(recs) == 1


def test_export_is_immutable_and_final_moves(tmp_path):
    import torch

    from longvila.io import sha256_tree
    from training.export import plain_model, point_final, publish
    from training.model.processing import build_processor
    from training.model.profiles import build_model, get_profile

    cfg = get_profile("smoke").config()
    proc = build_processor(cfg.tokens_per_frame, cfg.vision_config.image_size, 512)
    model = build_model("smoke", seed=0)
    out = tmp_path / "stage"
    legacy = out / "final"  # the layout before versioned exports: a plain directory
    legacy.mkdir(parents=True)
    (legacy / "config.json").write_text("{}")
    d1, h1 = publish(plain_model(model, model.state_dict(), torch.float32), proc, out)
    assert (out / "final").is_symlink() and (out / "final").resolve() == d1 and sha256_tree(d1) == h1
    assert (out / "exports" / sha256_tree(out / "exports" / d1.name)[:16]).exists()
    assert len(list((out / "exports").iterdir())) == 2  # the legacy final/ was kept as an export
    with torch.no_grad():
        model.llm.lm_head.weight.add_(1.0)
    d2, h2 = publish(plain_model(model, model.state_dict(), torch.float32), proc, out)
    assert h2 != h1 and (out / "final").resolve() == d2 and sha256_tree(d1) == h1  # the old one is untouched
    point_final(out, d1)  # re-pointing is atomic and leaves no temporary links behind
    assert (out / "final").resolve() == d1 and not list(out.glob(".final.tmp-*"))
    d3, h3 = publish(plain_model(model, model.state_dict(), torch.float32), proc, out)
    assert (d3, h3) == (d2, h2)  # the same content is one export


def test_lora_merge_of_the_gathered_state_equals_the_adapted_model(processor):
    import torch

    from training.adapters import apply_lora, merge_lora_state
    from training.export import plain_model
    from training.model.profiles import build_model
    from training.model.smoke_data import SmokeBatchSource

    model = build_model("smoke", seed=0)
    apply_lora(model, r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
               trainable_extra=["norm"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)  # peft starts B at zero: make the adapters matter
    b = SmokeBatchSource(processor, seed=3, batch_size=1, frames=(1, 1)).batch(0)
    merged = plain_model(model, merge_lora_state(model.state_dict(), 8 / 4), torch.float32)
    assert not any("lora_" in k or "base_layer" in k for k in merged.state_dict())
    with torch.no_grad():
        want = model(input_ids=b["input_ids"], pixel_values=b["pixel_values"]).logits
        got = merged(input_ids=b["input_ids"], pixel_values=b["pixel_values"]).logits
        plain = build_model("smoke", seed=0)(input_ids=b["input_ids"], pixel_values=b["pixel_values"]).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(plain, want, atol=1e-3)
