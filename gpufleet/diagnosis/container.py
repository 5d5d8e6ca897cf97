"""The container layer: docker with the nvidia runtime, and a --gpus all container seeing the
host's GPUs.
"""

from __future__ import annotations

import re

from gpufleet.diagnosis.catalog import RERUN, explain
from gpufleet.diagnosis.checks import Check, failed, ok, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence, first_line

GPU_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_container(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    docker = evidence.get("docker_info")
    if docker is None:
        return [
            failed(
                "docker daemon answers",
                "no answer from docker info",
                "docker is not installed or its daemon is not running",
                f"systemctl start docker (or install docker and {RERUN})",
            )
        ]
    runtimes = ", ".join(sorted(docker["runtimes"])) or "none"
    checks = [
        ok("docker daemon answers", f"docker {docker['server_version']}"),
        outcome(
            "nvidia runtime registered",
            "nvidia" in docker["runtimes"],
            f"runtimes: {runtimes}",
            "docker has no 'nvidia' runtime",
            "install nvidia-container-toolkit and restart docker (" + RERUN + "; daemon.json "
            "runtimes.nvidia missing)",
        ),
    ]
    wanted_default = expectations.default_runtime
    if wanted_default is not None:
        checks.append(
            outcome(
                "default runtime",
                docker["default_runtime"] == wanted_default,
                docker["default_runtime"] or "unknown",
                f"docker's default runtime is {docker['default_runtime']}, not {wanted_default}",
                f'set "default-runtime": "{wanted_default}" in /etc/docker/daemon.json and '
                f"restart docker ({RERUN})",
            )
        )
    checks.append(check_container_gpus(evidence, expectations))
    return checks


def check_container_gpus(evidence: HostEvidence, expectations: Expectations) -> Check:
    name = "--gpus all container sees the host's GPUs"
    run = evidence.get("container_gpu_run")
    if run is None:
        # Docker answered, so the image was missing and, without the smoke test, not needed.
        return unverified(
            name,
            f"no container was run: {expectations.tensorflow_image} is not on the host (needed "
            "only for the smoke test)",
        )
    nvidia_smi = evidence.get("nvidia_smi")
    host_uuids = {gpu["uuid"] for gpu in nvidia_smi["gpus"]} if nvidia_smi else set()
    seen = set(GPU_UUID.findall(run["output"]))
    if run["exit_status"] != 0:
        known = explain(run["output"], expectations)
        problem, fix = known or (
            f"`{run['command']}` failed with exit status {run['exit_status']}",
            "read the output above; check `docker info` and journalctl -u docker",
        )
        return failed(name, first_line(run["output"]), problem, fix)
    missing = sorted(host_uuids - seen)
    return outcome(
        name,
        bool(seen) and not missing and seen <= host_uuids,
        f"{len(seen)} of {len(host_uuids)} host GPU UUIDs",
        f"the container sees {len(seen)} of the host's {len(host_uuids)} GPUs"
        + (f" (missing {', '.join(missing)})" if missing else ""),
        "run it with --gpus all and check NVIDIA_VISIBLE_DEVICES is not set in the image or "
        "daemon.json",
    )
