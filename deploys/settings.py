"""
gpufleet's inventory interface: the data keys, their defaults and their types.

Only @deploy functions call `read_settings(host.data)`; everything below them takes plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from pyinfra.api.exceptions import DeployError

from deploys import compat

DATA_DEFAULTS: dict[str, Any] = {
    "nvidia_driver_branch": "470",
    "nvidia_driver_version": "470.182.03",
    "cuda_version": "11.2",
    "cuda_package_version": "11.2.2",
    "cudnn_version": "8.1.1.33",
    # None: NVIDIA's repository for the host's OS release.
    "nvidia_cuda_repo_url": None,
    # None: 3bf863cc.pub inside the CUDA repository.
    "nvidia_cuda_repo_key_url": None,
    "nvidia_cuda_repo_key_fingerprint": compat.NVIDIA_CUDA_KEY_FINGERPRINT,
    "nvidia_container_repo_url": compat.NVIDIA_CONTAINER_REPO_URL,
    "nvidia_container_repo_key_url": compat.NVIDIA_CONTAINER_KEY_URL,
    "nvidia_container_repo_key_fingerprint": compat.NVIDIA_CONTAINER_KEY_FINGERPRINT,
    "nvidia_container_toolkit_version": "1.17.4",
    # None: docker.io, Debian's and Ubuntu's own build.
    "docker_package": None,
    "docker_default_runtime": "nvidia",
    "docker_daemon_config": {},
    "gpu_reboot_allowed": False,
    "tensorflow_image": "tensorflow/tensorflow:2.9.0-gpu",
    # Verification (deploys/verify.py), run at the end of gpu_host unless gpu_verify is false.
    "gpu_verify": True,
    # None: at least one GPU.
    "gpu_expected_count": None,
    # Run the TensorFlow smoke test (the framework layer) in tensorflow_image.
    "gpu_smoke_test": True,
    # Also run it on the host, in a virtualenv with TensorFlow 2.9 (needs Python 3.7 to 3.10).
    "tensorflow_host_test": False,
    # Folder on the controller (relative to where pyinfra runs) for the per-host result JSON.
    "gpu_results_dir": "results",
    # Driver upgrades (deploys/driver_upgrade.py, deploys/rollout.py): hosts per batch, whether
    # GPU containers may be stopped, and whether the verification includes the smoke test.
    "upgrade_batch_size": 1,
    "upgrade_drain": False,
    "upgrade_smoke_test": False,
}


class SettingsError(DeployError):
    """An inventory value of the wrong type or shape."""


class DataSource(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class GpuSettings:
    nvidia_driver_branch: str
    nvidia_driver_version: str
    cuda_version: str
    cuda_package_version: str
    cudnn_version: str
    nvidia_cuda_repo_url: str | None
    nvidia_cuda_repo_key_url: str | None
    nvidia_cuda_repo_key_fingerprint: str
    nvidia_container_repo_url: str
    nvidia_container_repo_key_url: str
    nvidia_container_repo_key_fingerprint: str
    nvidia_container_toolkit_version: str
    docker_package: str
    docker_default_runtime: str | None
    docker_daemon_config: dict[str, Any] = field(default_factory=dict)
    gpu_reboot_allowed: bool = False
    tensorflow_image: str = "tensorflow/tensorflow:2.9.0-gpu"
    gpu_verify: bool = True
    gpu_expected_count: int | None = None
    gpu_smoke_test: bool = True
    tensorflow_host_test: bool = False
    gpu_results_dir: str = "results"
    upgrade_batch_size: int = 1
    upgrade_drain: bool = False
    upgrade_smoke_test: bool = False

    @property
    def stack_request(self) -> compat.StackRequest:
        return compat.StackRequest(
            nvidia_driver_branch=self.nvidia_driver_branch,
            nvidia_driver_version=self.nvidia_driver_version,
            cuda_version=self.cuda_version,
            cuda_package_version=self.cuda_package_version,
            cudnn_version=self.cudnn_version,
            nvidia_container_toolkit_version=self.nvidia_container_toolkit_version,
            tensorflow_image=self.tensorflow_image,
            nvidia_cuda_repo_url=self.nvidia_cuda_repo_url,
        )

    def cuda_repo_url(self, platform: compat.HostPlatform) -> str:
        return self.nvidia_cuda_repo_url or compat.cuda_repo_url_for(platform)

    def cuda_repo_key_url(self, platform: compat.HostPlatform) -> str:
        return self.nvidia_cuda_repo_key_url or self.cuda_repo_url(platform) + "3bf863cc.pub"


_OPTIONAL = {
    "nvidia_cuda_repo_url",
    "nvidia_cuda_repo_key_url",
    "docker_package",
    "docker_default_runtime",
}
_BOOLEANS = {
    "gpu_reboot_allowed",
    "gpu_verify",
    "gpu_smoke_test",
    "tensorflow_host_test",
    "upgrade_drain",
    "upgrade_smoke_test",
}
_NOT_STRINGS = {*_BOOLEANS, "gpu_expected_count", "docker_daemon_config", "upgrade_batch_size"}


def _check_type(key: str, value: Any) -> str | None:
    if key in _BOOLEANS:
        return None if isinstance(value, bool) else "must be true or false"
    if key == "gpu_expected_count":
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return None
        return "must be a whole number of GPUs (at least 1), or None for at least one"
    if key == "upgrade_batch_size":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return None
        return "must be a whole number of hosts (at least 1)"
    if key == "docker_daemon_config":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return (
                "must be a mapping of daemon.json keys to values, e.g. {'default-shm-size': '1G'}"
            )
        return None
    if value is None and key in _OPTIONAL:
        return None
    if not isinstance(value, str) or not value.strip():
        example = DATA_DEFAULTS[key] or "a non-empty string"
        return f"must be a string, e.g. {example!r}"
    return None


def read_settings(data: DataSource) -> GpuSettings:
    """Read and type-check every gpufleet key; all problems are reported at once."""
    values: dict[str, Any] = {}
    problems = []
    for spec in fields(GpuSettings):
        value = data.get(spec.name, DATA_DEFAULTS[spec.name])
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and spec.name not in _NOT_STRINGS
        ):
            # YAML-ish inventories write 11.2 or 470 unquoted; the string is what was meant.
            value = str(value)
        problem = _check_type(spec.name, value)
        if problem:
            problems.append(f"{spec.name} = {value!r} {problem}")
        values[spec.name] = value
    if problems:
        raise SettingsError("invalid gpufleet data:\n" + "\n".join(f"  - {p}" for p in problems))
    if values["docker_package"] is None:
        values["docker_package"] = "docker.io"
    return GpuSettings(**values)
