"""Kubernetes rendering of a `training.multinode.LaunchSpec`: a headless Service + an Indexed Job.

* The Job has ``completionMode: Indexed`` with ``completions = parallelism = nnodes``: pod ``i`` gets the
  stable hostname ``<name>-<i>`` and, through the Service (``subdomain``), the DNS name
  ``<name>-<i>.<name>.<namespace>.svc``. The node rank is the pod's completion index (read from the
  ``batch.kubernetes.io/job-completion-index`` annotation into ``NODE_RANK``); the master address is pod
  0's DNS name, so global rank 0 (the Pipes context, checkpoints) is always in pod 0.
* The Service is headless (``clusterIP: None``) and publishes not-ready addresses, so every pod resolves
  pod 0 before pod 0 reports ready. ``backoffLimit: 0`` and ``restartPolicy: Never``: a static
  rendezvous cannot re-admit a restarted node; resume is a new Job with ``--resume``.
* The objects are ``kubernetes`` client models (``pip install -e ".[k8s]"``); `to_yaml` serialises them
  the way the API server receives them. Nothing here talks to a cluster.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .multinode import LaunchSpec

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def render_k8s(spec: "LaunchSpec", name: str, image: str, namespace: str, gpus_per_node: int,
               pod_overrides: dict[str, Any]):
    from kubernetes import client as k

    labels = {"app.kubernetes.io/name": "longvila-train", "longvila/job": name}
    master = f"{name}-0.{name}.{namespace}.svc"
    port = spec.master_port
    # $(NODE_RANK) is expanded by the kubelet from the container's env below
    torchrun = ["python", "-m", "training.launch", *replace(spec, master_addr=master).torchrun_args("$(NODE_RANK)")]
    resources = k.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus_per_node)}) if gpus_per_node else None
    env = [k.V1EnvVar(name="NODE_RANK", value_from=k.V1EnvVarSource(
        field_ref=k.V1ObjectFieldSelector(field_path=f"metadata.annotations['{INDEX_ANNOTATION}']")))]
    env += [k.V1EnvVar(name=key, value=value) for key, value in sorted(spec.env.items())]
    container = k.V1Container(name="trainer", image=image, command=torchrun, env=env, resources=resources,
                              ports=[k.V1ContainerPort(container_port=port, name="rendezvous")])
    pod = k.V1PodSpec(containers=[container], restart_policy="Never", subdomain=name, **pod_overrides)
    service = k.V1Service(
        api_version="v1", kind="Service", metadata=k.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=k.V1ServiceSpec(cluster_ip="None", selector=labels, publish_not_ready_addresses=True,
                             ports=[k.V1ServicePort(name="rendezvous", port=port, target_port=port)]))
    job = k.V1Job(
        api_version="batch/v1", kind="Job", metadata=k.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=k.V1JobSpec(completion_mode="Indexed", completions=spec.nnodes, parallelism=spec.nnodes,
                         backoff_limit=0, template=k.V1PodTemplateSpec(
                             metadata=k.V1ObjectMeta(labels=labels), spec=pod)))
    return service, job


def to_yaml(objects) -> str:
    import yaml
    from kubernetes.client import ApiClient

    api = ApiClient()
    return yaml.safe_dump_all([api.sanitize_for_serialization(o) for o in objects], sort_keys=False)


__all__ = ["render_k8s", "to_yaml", "INDEX_ANNOTATION"]
