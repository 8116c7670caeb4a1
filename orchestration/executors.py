"""Executor choice: configuration, not code.

``LONGVILA_EXECUTOR`` selects:

* ``in_process`` (default): `dagster.in_process_executor`, every step of a run in the run's process. For
  per-video chains: no process start-up per step; parallelism comes from runs in parallel across videos.
* ``multiprocess``: `dagster.multiprocess_executor`, at most ``LONGVILA_MAX_CONCURRENT`` steps at once
  (default: number of CPUs). For one big run with independent heavy steps.
* ``k8s``: `dagster_k8s.k8s_job_executor` (one Kubernetes Job per step), on a cluster; needs
  ``pip install "dagster-k8s==0.29.*"``.

`dagster_k8s` is imported only when `k8s` is asked for. An equivalent configuration for a
Kubernetes deployment, written as run config in the Dagster UI launchpad or in code:

```python
from dagster_k8s import k8s_job_executor

executor = k8s_job_executor.configured({
    "job_namespace": "longvila",
    "max_concurrent": 8,
    "image_pull_policy": "IfNotPresent",
    "env_config_maps": ["longvila-env"],          # LONGVILA_SOURCE / LONGVILA_STORAGE / S3 endpoint
    "env_secrets": ["longvila-s3-credentials"],   # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    "step_k8s_config": {
        "container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"},
                                           "limits": {"cpu": "4", "memory": "16Gi"}}},
    },
})
```
Per-asset pod resources (e.g. a GPU for training steps) are set with the op tag
``dagster-k8s/config`` on those assets.
"""

from __future__ import annotations

import os

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

EXECUTORS = ("multiprocess", "in_process", "k8s")

K8S_DEFAULT_CONFIG = {
    "job_namespace": "longvila",
    "max_concurrent": 8,
    "image_pull_policy": "IfNotPresent",
    "env_config_maps": ["longvila-env"],
    "env_secrets": ["longvila-s3-credentials"],
}


def k8s_executor(config: dict | None = None) -> ExecutorDefinition:
    """`dagster_k8s.k8s_job_executor` configured for this project (imports dagster-k8s lazily)."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as e:  # pragma: no cover - depends on an optional package
        raise RuntimeError(
            'LONGVILA_EXECUTOR=k8s needs dagster-k8s: pip install "dagster-k8s==0.29.*" (matches dagster 1.13)'
        ) from e
    return k8s_job_executor.configured({**K8S_DEFAULT_CONFIG, **(config or {})}, name="k8s_job_executor")


def executor_from_env(name: str | None = None) -> ExecutorDefinition:
    """The executor selected by `name` or LONGVILA_EXECUTOR (default in_process)."""
    name = (name or os.environ.get("LONGVILA_EXECUTOR") or "in_process").strip().lower().replace("-", "_")
    if name == "multiprocess":
        max_c = int(os.environ.get("LONGVILA_MAX_CONCURRENT") or (os.cpu_count() or 1))
        return multiprocess_executor.configured({"max_concurrent": max_c}, name="multiprocess")
    if name in ("in_process", "inprocess"):
        return in_process_executor
    if name == "k8s":
        return k8s_executor()
    raise ValueError(f"LONGVILA_EXECUTOR={name!r}: choose one of {', '.join(EXECUTORS)}")


__all__ = ["executor_from_env", "k8s_executor", "EXECUTORS", "K8S_DEFAULT_CONFIG"]
