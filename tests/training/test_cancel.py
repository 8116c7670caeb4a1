"""A cancelled training run leaves no rank alive, and the next run resumes from the last checkpoint."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.harness import processes_mentioning

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from dagster import DagsterInstance, materialize
from assets.training import TrainingLauncher, build_training_defs
from assets.resources import LakeResource
launcher = TrainingLauncher(max_steps={steps}, checkpoint_every={every}, nproc_per_node=2, num_threads=1)
defs = build_training_defs(launcher=launcher)
a = [x for x in defs.assets if x.key.to_user_string() == "stage1_alignment"]
r = materialize(a, resources={{"lake": LakeResource(storage={storage!r}), "training_launcher": launcher}},
                instance=DagsterInstance.ephemeral(), raise_on_error=False)
sys.exit(0 if r.success else 3)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_launcher_kills_every_rank_and_next_run_resumes(tmp_path, stage_datasets):
    from dagster import DagsterInstance, materialize

    from assets.training import TrainingLauncher, build_training_defs
    from longvila import layout
    from assets.resources import LakeResource

    storage = str(tmp_path / "lake")
    shutil.copytree(stage_datasets[1], layout.dataset_dir(storage, "stage1_dataset"))
    # long enough that the launcher is still training when the first checkpoint appears, even on a
    # quiet machine (a step of the smoke model takes ~20 ms); older checkpoints are pruned, so wait for any
    steps, every = 400, 10
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-c", SCRIPT.format(steps=steps, every=every, storage=storage)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage_dir = Path(storage) / "checkpoints" / "stage1_alignment"
    deadline = time.time() + 240
    while not any(stage_dir.glob("runs/*/checkpoints/step-*")):
        assert launcher.poll() is None, "launcher ended before the first checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    ranks = [p for p in processes_mentioning(storage) if p != launcher.pid]
    assert len(ranks) >= 3  # torchrun + 2 ranks
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=60)
    deadline = time.time() + 60
    while processes_mentioning(storage) and time.time() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(storage) == [], "a torchrun rank survived the cancelled run"
    assert not (Path(storage) / "checkpoints" / "stage1_alignment" / "final").exists()

    # the next run resumes from the newest valid checkpoint and finishes
    launcher_res = TrainingLauncher(max_steps=steps, checkpoint_every=every, nproc_per_node=2, num_threads=1)
    defs = build_training_defs(launcher=launcher_res)
    a = [x for x in defs.assets if x.key.to_user_string() == "stage1_alignment"]
    inst = DagsterInstance.ephemeral()
    r = materialize(a, resources={"lake": LakeResource(storage=storage), "training_launcher": launcher_res},
                    instance=inst)
    assert r.success
    md = inst.get_latest_materialization_event(a[0].key).asset_materialization.metadata
    assert md["resumed_from_step"].value >= every and md["resumed_from_step"].value % every == 0
    assert md["steps"].value == steps
