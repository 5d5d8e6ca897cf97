"""
Facts about who uses the GPUs: the running containers that were given GPUs, and the container
(if any) of each process nvidia-smi reports.

The processes themselves are NvidiaSmi's ``processes``; the use counts of the nvidia kernel
modules (the number in /sys/module/<name>/refcnt) are NvidiaKernel's ``nvidia_modules``.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, TypedDict

from pyinfra.api import FactBase

CONTAINER_LINE = "container"
PROCESS_LINE = "process"
# What `docker inspect` prints per running container: tab-separated fields (a Go template string
# literal makes the tab; JSON output holds none).
_TAB = '{{"\\t"}}'
CONTAINER_FORMAT = _TAB.join(
    (
        CONTAINER_LINE,
        "{{.Id}}",
        "{{.Name}}",
        "{{.Config.Image}}",
        "{{.HostConfig.Runtime}}",
        "{{json .HostConfig.DeviceRequests}}",
        "{{json .Config.Env}}",
    )
)
# The nvidia runtime gives a container no GPU when NVIDIA_VISIBLE_DEVICES is unset or one of these.
NO_VISIBLE_DEVICES = ("", "void", "none")
# Docker's cgroup for a container: /docker/<id> (cgroup v1, cgroupfs) or docker-<id>.scope.
_DOCKER_CGROUP = re.compile(r"docker[-/]([0-9a-f]{64})")


class GpuContainer(TypedDict):
    id: str
    name: str
    image: str
    runtime: str
    # docker run --gpus: a device request for the "gpu" capability (or the nvidia driver).
    gpu_device_request: bool
    # NVIDIA_VISIBLE_DEVICES, which the nvidia runtime reads; None when unset.
    visible_devices: str | None


class GpuUsersInfo(TypedDict):
    containers: list[GpuContainer]
    # pid of each process nvidia-smi reports -> id of the docker container it runs in, or None.
    process_containers: dict[int, str | None]


def _requests_gpus(device_requests: Any) -> bool:
    for request in device_requests or []:
        capabilities = [c for group in request.get("Capabilities") or [] for c in group]
        if "gpu" in capabilities or request.get("Driver") == "nvidia":
            return True
    return False


def _visible_devices(environment: list[str] | None) -> str | None:
    for variable in environment or []:
        name, _, value = variable.partition("=")
        if name == "NVIDIA_VISIBLE_DEVICES":
            return value
    return None


def parse_gpu_users(output: list[str]) -> GpuUsersInfo:
    info: GpuUsersInfo = {"containers": [], "process_containers": {}}
    for line in output:
        kind, _, rest = line.partition("\t")
        if kind == CONTAINER_LINE:
            fields = rest.split("\t")
            if len(fields) != 6:
                continue
            container_id, name, image, runtime, requests, environment = fields
            try:
                device_requests, variables = json.loads(requests), json.loads(environment)
            except json.JSONDecodeError:
                continue
            info["containers"].append(
                {
                    "id": container_id,
                    "name": name.lstrip("/"),
                    "image": image,
                    "runtime": runtime,
                    "gpu_device_request": _requests_gpus(device_requests),
                    "visible_devices": _visible_devices(variables),
                }
            )
        elif kind == PROCESS_LINE:
            pid, _, cgroups = rest.partition("\t")
            if pid.isdigit():
                match = _DOCKER_CGROUP.search(cgroups)
                info["process_containers"][int(pid)] = match.group(1) if match else None
    return info


def container_uses_gpus(container: GpuContainer, default_runtime: str) -> bool:
    """Whether the container was given GPUs: by --gpus, or by the nvidia runtime's variable."""
    if container["gpu_device_request"]:
        return True
    runtime = container["runtime"] or default_runtime
    visible = container["visible_devices"]
    return runtime == "nvidia" and visible is not None and visible not in NO_VISIBLE_DEVICES


class GpuUsers(FactBase[GpuUsersInfo]):
    """
    Returns the running docker containers (with what decides whether they have GPUs) and, for
    each process on the GPUs, the container it runs in. Without docker or nvidia-smi the
    corresponding part is empty.
    """

    @staticmethod
    def default() -> GpuUsersInfo:
        return parse_gpu_users([])

    def command(self) -> str:
        return (
            "if command -v docker >/dev/null 2>&1; then "
            f"docker ps -q | xargs -r docker inspect --format {shlex.quote(CONTAINER_FORMAT)}; fi; "
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            "for pid in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader); do "
            'case "$pid" in *[!0-9]*) continue;; esac; '
            f"printf '{PROCESS_LINE}\\t%s\\t' \"$pid\"; "
            "tr '\\n' ' ' < \"/proc/$pid/cgroup\"; echo; "
            "done; fi; true"
        )

    def process(self, output: list[str]) -> GpuUsersInfo:
        return parse_gpu_users(output)
