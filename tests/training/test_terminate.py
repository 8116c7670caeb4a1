"""Terminating a running stage as the UI's Terminate button does, on a real daemon and instance: the run was
launched through the run queue and the project's launcher, `instance.run_launcher.terminate` (what the
UI's terminateRun mutation calls for a started run) stops it, no torchrun rank survives, and the next
materialisation resumes from the last checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.distributed
def test_terminate_from_the_ui_kills_every_rank_and_the_next_run_resumes(tmp_path, stage_datasets):
    from dagster import AssetKey

    from longvila import layout
    from orchestration.harness import ProjectDaemon, processes_mentioning

    ws = tmp_path / "workspace.yaml"
    ws.write_text(f"load_from:\n  - python_file:\n      relative_path: {HERE / 'terminate_location.py'}\n"
                  f"      working_directory: {HERE.parents[1]}\n")
    daemon = ProjectDaemon(tmp_path / "work", workspace=ws, env={"OMP_NUM_THREADS": "1"}, cpus=2)
    try:
        storage = str(daemon.storage)
        shutil.copytree(stage_datasets[1], layout.dataset_dir(storage, "stage1_dataset"))
        daemon.cli("job", "launch", "-j", "stage1")
        (run,) = daemon.wait("the stage-1 run", lambda: daemon.runs() or None, timeout=120)
        ckpts = Path(storage) / "checkpoints" / "stage1_alignment"
        daemon.wait("a checkpoint", lambda: any(ckpts.rglob("step-*")), timeout=600, every=0.2)
        assert daemon.instance.get_run_by_id(run.run_id).status.value == "STARTED"
        ranks = daemon.wait("the ranks", lambda: [p for p in processes_mentioning(storage)
                                                  if "training.train" in Path(f"/proc/{p}/cmdline").read_text()])
        assert len(ranks) >= 2

        assert daemon.instance.run_launcher.terminate(run.run_id)  # the Terminate button

        daemon.wait("the run cancelled", lambda: daemon.instance.get_run_by_id(run.run_id).status.value
                    == "CANCELED", timeout=180)
        daemon.wait("every rank gone", lambda: not processes_mentioning(storage), timeout=120)
        step_dirs = sorted(p.name for p in ckpts.rglob("step-*"))
        assert step_dirs, "the cancelled run left no checkpoint to resume from"

        daemon.cli("job", "launch", "-j", "stage1")
        runs = daemon.wait("the second run", lambda: [r for r in daemon.runs() if r.status.value in
                                                      ("SUCCESS", "FAILURE", "CANCELED") and r.run_id != run.run_id],
                           timeout=900)
        assert runs[0].status.value == "SUCCESS", daemon.log_path
        latest = daemon.instance.get_latest_materialization_event(AssetKey("stage1_alignment"))
        md = latest.asset_materialization.metadata
        assert md["resumed_from_step"].value >= 10 and md["resumed_from_step"].value % 10 == 0
        assert md["steps"].value == 400
    finally:
        daemon.stop()
