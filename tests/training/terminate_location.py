"""Code location of the terminate test: the project's stage-1 asset (Pipes + torchrun, 2 ranks) with a long
run and frequent checkpoints, storage from LONGVILA_STORAGE, and a ``stage1`` job to launch it."""

from dagster import Definitions, define_asset_job

from assets.resources import LakeResource
from assets.training import STAGE_KEYS, TrainingLauncher, build_training_defs
from orchestration.executors import executor_from_env

launcher = TrainingLauncher(max_steps=400, checkpoint_every=10, nproc_per_node=2, num_threads=1)
stage1 = [a for a in build_training_defs(launcher=launcher).assets if a.key == STAGE_KEYS[0]]
defs = Definitions(assets=stage1, jobs=[define_asset_job("stage1", selection=[STAGE_KEYS[0]])],
                   resources={"lake": LakeResource.from_env(), "training_launcher": launcher},
                   executor=executor_from_env())
