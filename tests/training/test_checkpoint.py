"""Checkpoint files: pickle-free round trip of every state, checksums, pruning within a run identity."""

import json
import random
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint as ckpt
from training.fsdp import full_state, load_full_state

REPO = Path(__file__).resolve().parents[2]


def _tiny(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return m, opt, sched


def _state(m, opt, sched, step):
    msd, osd = full_state(m, opt)
    return ckpt.CheckpointState(msd, osd, sched.state_dict(), [ckpt.rng_state()], {"step": step, "losses": [1.0]})


def test_roundtrip_of_every_state_without_pickle(tmp_path, monkeypatch):
    m, opt, sched = _tiny()
    random.random(), np.random.rand(), torch.rand(1)
    d = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 3), _state(m, opt, sched, 3))
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    names = set(json.loads((d / "manifest.json").read_text())["files"])
    assert names == {"model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                     "rng.safetensors", "rng.json", "trainer_state.json"}

    def no_unpickling(*a, **k):
        raise AssertionError("a checkpoint load reached torch.load / pickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    loaded = ckpt.load_checkpoint(d)
    m2, opt2, sched2 = _tiny(seed=1)
    load_full_state(m2, opt2, loaded.model, loaded.optimizer)
    sched2.load_state_dict(loaded.scheduler)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] and sched2.last_epoch == sched.last_epoch
    ckpt.set_rng_state(loaded.rng[0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect
    assert loaded.trainer_state["step"] == 3
    # the small-file read (what ranks other than 0 do) skips weights and optimizer state
    small = ckpt.load_checkpoint(d, weights=False)
    assert small.model is None and small.optimizer is None and small.scheduler is not None


def test_no_unsafe_torch_load_anywhere_in_the_code():
    """Nothing in the project unpickles (issue 11): no torch.load(..., weights_only=False) (torch >= 2.13,
    which pyproject requires, loads weights_only by default) and no pickle module; the checkpoint code does
    not call torch.load at all."""
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for f in files:
        if f == "tests/training/test_checkpoint.py":
            continue
        text = (REPO / f).read_text()
        offenders += [f"{f}: {m.group(0)}" for m in re.finditer(r"torch\.load\([^)]*weights_only\s*=\s*False", text)]
        offenders += [f"{f}: {bad}" for bad in ("import pickle", "pickle.load", "from pickle") if bad in text]
        if f.startswith("training/") and "torch.load(" in text:
            offenders.append(f"{f}: torch.load in the training package")
    assert not offenders, offenders


def test_corrupted_file_detected_by_checksum(tmp_path):
    m, opt, sched = _tiny()
    d1 = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 2), _state(m, opt, sched, 2))
    d2 = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 4), _state(m, opt, sched, 4))
    f = d2 / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor payload: still a loadable safetensors file
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load_checkpoint(d2)
    ckpt.load_checkpoint(d2, weights=False)  # the small files are intact
    logs = []
    assert ckpt.latest_checkpoint(tmp_path, log=logs.append) == d1  # falls back to the older valid one
    assert "skipping" in logs[0]
    (d1 / "optimizer.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.verify_checkpoint(d1)
    assert ckpt.latest_checkpoint(tmp_path, log=logs.append) is None


def test_state_with_python_objects_is_refused(tmp_path):
    with pytest.raises(TypeError, match="not stored without pickle"):
        ckpt.save_tree(tmp_path, "x", {"fn": print})


def test_pruning_stays_inside_the_run_identity(tmp_path):
    m, opt, sched = _tiny()
    old = ckpt.start_run(tmp_path, "aaaa", {"seed": 0})
    for s in (5, 6):
        ckpt.save_checkpoint(ckpt.step_dir(old, s), _state(m, opt, sched, s))
    time.sleep(0.01)
    cur = ckpt.start_run(tmp_path, "bbbb", {"seed": 1})
    for s in (1, 2, 3):
        ckpt.save_checkpoint(ckpt.step_dir(cur, s), _state(m, opt, sched, s))
        ckpt.prune_checkpoints(cur, keep=2)
    assert [d.name for d in ckpt.list_checkpoints(cur)] == ["step-000002", "step-000003"]
    assert [d.name for d in ckpt.list_checkpoints(old)] == ["step-000005", "step-000006"]  # untouched
    assert ckpt.prune_runs(tmp_path, current="bbbb", keep=0) == [old]
    assert not old.exists() and cur.exists()
    assert ckpt.prune_runs(tmp_path, current="bbbb", keep=0) == []  # never the current run
    assert ckpt.prune_checkpoints(cur, keep=0) and ckpt.list_checkpoints(cur) == []
