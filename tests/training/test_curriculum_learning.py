"""The smoke curriculum learns (bench/curriculum.py: the real recipe, datasets, trainer with stage 5 on
MM-SP, benchmarks; no video decoding): stage 5 finds held-out needle digits at 4x its training frames,
stage 4 retrieves the passkey at 4x stage 3's context, stage 3 clearly does not. A few CPU minutes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.distributed
def test_the_smoke_curriculum_meets_its_learning_targets(tmp_path):
    from orchestration.demo import NIAH_TARGET, PASSKEY_MARGIN, PASSKEY_TARGET
    from training.recipes import load_recipe

    out = tmp_path / "curriculum.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "bench/curriculum.py", "--quiet", "--out", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]
    recipe = load_recipe("smoke")
    far = str(4 * recipe.stage(5).num_frames)
    long = str(4 * recipe.stage(3).max_length)
    s3, s4, s5 = (stages[recipe.stage(i).name] for i in (3, 4, 5))
    assert s5["nproc"] == 2 and s5["niah"][far] >= NIAH_TARGET, stages
    assert s4["passkey"][long] >= PASSKEY_TARGET and s3["passkey"][long] <= s4["passkey"][long] - PASSKEY_MARGIN
    assert stages[recipe.stage(1).name]["niah"][far] < 0.5  # before the curriculum: no retrieval
