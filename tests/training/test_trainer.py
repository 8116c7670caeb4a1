"""The trainer end to end: torchrun smoke command, kill + resume, stage export loadable by from_pretrained."""

import json
from pathlib import Path

import pytest



def losses(path) -> list[float]:
    from training.metrics import read_metrics

    return [r["loss"] for r in read_metrics(path)]


def checkpoints(out: Path) -> dict[str, list[str]]:
    """{run fingerprint: [checkpoint names]} under a stage output directory."""
    return {r.name: sorted(d.name for d in (r / "checkpoints").iterdir()) for r in sorted((out / "runs").iterdir())
            if (r / "checkpoints").exists()}


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_smoke_command_world2_matches_single_process(tmp_path, run_train):
    # the issue-3 smoke command (plus where to write)
    run_train(["--profile", "smoke", "--ulysses-degree", "2", "--max-steps", "3",
               "--output-dir", str(tmp_path / "sp2"), "--metrics-out", str(tmp_path / "sp2.jsonl")], nproc=2)
    recs = [json.loads(line) for line in (tmp_path / "sp2.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(r["tokens"] > 0 and r["seconds"] > 0 and r["peak_memory_mb"] > 0 for r in recs)
    run_train(["--profile", "smoke", "--max-steps", "3", "--output-dir", str(tmp_path / "sp1"),
               "--metrics-out", str(tmp_path / "sp1.jsonl")])
    assert losses(tmp_path / "sp2.jsonl") == pytest.approx(losses(tmp_path / "sp1.jsonl"), rel=1e-5)
    res = json.loads((tmp_path / "sp2" / "result.json").read_text())
    assert res["ulysses_degree"] == 2 and res["world_size"] == 2 and len(res["data_version"]) == 64


@pytest.mark.slow
@pytest.mark.distributed
def test_kill_and_resume_gives_same_losses(tmp_path, stage_datasets, run_train):
    common = ["--recipe", "smoke", "--stage", "3", "--data", stage_datasets[3], "--max-steps", "6",
              "--checkpoint-every", "2", "--micro-batch-size", "1", "--grad-accum", "2"]
    run_train(common + ["--output-dir", str(tmp_path / "full"), "--metrics-out", str(tmp_path / "full.jsonl")], nproc=2)
    ref = losses(tmp_path / "full.jsonl")
    assert len(ref) == 6
    out = tmp_path / "killed"
    p = run_train(common + ["--output-dir", str(out), "--metrics-out", str(tmp_path / "k.jsonl"),
                            "--kill-after-step", "5"], nproc=2, check=False)
    assert p.returncode != 0  # really killed
    assert not (out / "final").exists()
    assert list(checkpoints(out).values()) == [["step-000002", "step-000004"]]
    run_train(common + ["--output-dir", str(out), "--metrics-out", str(tmp_path / "k.jsonl"), "--resume"], nproc=2)
    res = json.loads((out / "result.json").read_text())
    assert res["start_step"] == 4
    got = losses(tmp_path / "k.jsonl")
    assert got == ref  # bit-identical per-step losses, including the re-done step 5
    # the export of the resumed run equals the uninterrupted run's export
    full = json.loads((tmp_path / "full" / "result.json").read_text())
    assert res["data_version"] == full["data_version"]


@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_skipped_on_resume(tmp_path, stage_datasets, run_train):
    common = ["--recipe", "smoke", "--stage", "1", "--data", stage_datasets[1], "--max-steps", "4",
              "--checkpoint-every", "2", "--no-export"]
    out = tmp_path / "run"
    run_train(common + ["--output-dir", str(out), "--kill-after-step", "4", "--checkpoint-every", "2",
                        "--keep-checkpoints", "5"], check=False)
    # step-2 and the final-step checkpoint exist? kill happens after step 4, before the end-of-run save
    (run, ck), = checkpoints(out).items()
    assert ck == ["step-000002"]
    f = out / "runs" / run / "checkpoints" / "step-000002" / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    p = run_train(common + ["--output-dir", str(out), "--resume"])
    assert "checksum mismatch" in p.stdout and "skipping" in p.stdout
    assert json.loads((out / "result.json").read_text())["start_step"] == 0  # started over, not loaded


def test_stage_with_no_usable_samples_fails_clearly(tmp_path, stage_datasets):
    from longvila.errors import InputError
    from training.trainer import TrainArgs, train

    # a recipe whose stage-1 length no sample fits in
    with pytest.raises(InputError, match="zero usable samples: 6 records, 6 longer than max_length 16"):
        train(TrainArgs(recipe=str(_short_recipe(tmp_path)), stage="1", data=[stage_datasets[1]], max_steps=1,
                        output_dir=str(tmp_path / "o")))
    assert not (tmp_path / "o" / "final").exists()


def _short_recipe(tmp_path) -> Path:
    import yaml

    from training.recipes import RECIPE_DIR

    d = yaml.safe_load((RECIPE_DIR / "smoke.yaml").read_text())
    d["stages"]["stage1_alignment"]["max_length"] = 16
    p = tmp_path / "short.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_gradient_checkpointing_and_grad_accum_keep_losses(tmp_path, stage_datasets):
    from training.metrics import read_metrics
    from training.trainer import TrainArgs, train

    def run(name, **kw):
        m = tmp_path / f"{name}.jsonl"
        train(TrainArgs(recipe="smoke", stage="3", data=[stage_datasets[3]], max_steps=2,
                        output_dir=str(tmp_path / name), metrics_out=str(m), export=False, checkpoint_every=0, **kw))
        return [r["loss"] for r in read_metrics(m)]

    ref = run("ref", micro_batch_size=2, grad_accum=1)
    assert run("gc", micro_batch_size=2, grad_accum=1, gradient_checkpointing=True) == pytest.approx(ref, rel=1e-5)
    # 2 micro-batches of 1 row == 1 micro-batch of 2 rows (token-weighted mean over the step)
    assert run("acc", micro_batch_size=1, grad_accum=2) == pytest.approx(ref, rel=1e-5)
