"""
gpufleet's inventory interface: the data keys, their defaults and their types.

Only @deploy functions call `read_settings(host.data)`; everything below them takes plain values.
Every value is checked here, before anything builds a package name, a path or an apt source line
from it; a misspelt key is refused rather than silently left to its default.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from pyinfra.api.exceptions import DeployError

from gpufleet.stack import compat
from gpufleet.stack.urls import redact, url_problem

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
    # Restart docker for a daemon.json change even while containers run (stopping them, unless
    # live-restore is on).
    "docker_restart_with_running_containers": False,
    "gpu_reboot_allowed": False,
    # Seconds a package change waits for another process's dpkg/apt lock before failing the host.
    "gpu_apt_lock_timeout": 600,
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

# An unknown key with one of these prefixes looks like gpufleet's: it is reported, not ignored.
GPUFLEET_KEY_PREFIXES = ("gpu_", "nvidia_", "cuda_", "cudnn_", "docker_", "tensorflow_", "upgrade_")
# pyinfra's own data keys with those prefixes: the docker and podman connectors' options, and
# the image and container the dockerssh connector keeps in the host's data.
PYINFRA_DATA_KEYS = frozenset(
    {
        "docker_identifier",
        "docker_platform",
        "docker_architecture",
        "docker_image",
        "docker_container_id",
    }
)
# difflib's ratio from which an unknown key is a misspelling of a known one: a wrong, missing or
# swapped letter in the shortest key is above it, another deploy's docker_users (0.62) is not.
TYPO_CUTOFF = 0.85


class SettingsError(DeployError):
    """An inventory value of the wrong type or shape, or a misspelt key."""


class DataSource(Protocol):
    """pyinfra's HostData (`host.data`): read one key, or all of them flattened with dict()."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def dict(self) -> Mapping[str, Any]: ...


# host.data, or a plain mapping of data keys (the rollout's inventory dump, tests).
InventoryData: TypeAlias = "DataSource | Mapping[str, Any]"


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
    docker_restart_with_running_containers: bool = False
    gpu_reboot_allowed: bool = False
    gpu_apt_lock_timeout: int = 600
    tensorflow_image: str = "tensorflow/tensorflow:2.9.0-gpu"
    gpu_verify: bool = True
    gpu_expected_count: int | None = None
    gpu_smoke_test: bool = True
    tensorflow_host_test: bool = False
    gpu_results_dir: str = "results"
    upgrade_batch_size: int = 1
    upgrade_drain: bool = False
    upgrade_smoke_test: bool = False
    # Unknown keys that look like gpufleet's but are not a misspelling of one: for the log.
    warnings: tuple[str, ...] = ()

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
        return self.nvidia_cuda_repo_url or compat.cuda_repo_url(platform.cuda_repo_release)

    def cuda_repo_key_url(self, platform: compat.HostPlatform) -> str:
        return self.nvidia_cuda_repo_key_url or self.cuda_repo_url(platform) + "3bf863cc.pub"


# Keys that may be None (see DATA_DEFAULTS for what None means).
_OPTIONAL = {
    "nvidia_cuda_repo_url",
    "nvidia_cuda_repo_key_url",
    "docker_package",
    "docker_default_runtime",
    "gpu_expected_count",
}
_BOOLEANS = {
    "docker_restart_with_running_containers",
    "gpu_reboot_allowed",
    "gpu_verify",
    "gpu_smoke_test",
    "tensorflow_host_test",
    "upgrade_drain",
    "upgrade_smoke_test",
}
# Whole-number keys: the least value, what the number is, and a typical one.
_WHOLE_NUMBERS: dict[str, tuple[int, str, int]] = {
    "gpu_expected_count": (1, "a whole number of GPUs (at least 1), or None for at least one", 8),
    "upgrade_batch_size": (1, "a whole number of hosts (at least 1)", 2),
    "gpu_apt_lock_timeout": (0, "a whole number of seconds (0 or more)", 600),
}
_NOT_STRINGS = {*_BOOLEANS, *_WHOLE_NUMBERS, "docker_daemon_config"}
# Written into `deb [signed-by=...] URL /` as one word.
_REPOSITORY_URLS = {"nvidia_cuda_repo_url", "nvidia_container_repo_url"}
# Fetched on the controller: a URL, or a path there.
_KEY_LOCATIONS = {"nvidia_cuda_repo_key_url", "nvidia_container_repo_key_url"}
# Examples for the string keys whose default is None.
_EXAMPLES = {
    "nvidia_cuda_repo_url": "https://mirror.example.com/cuda/ubuntu2004/x86_64/",
    "nvidia_cuda_repo_key_url": "https://mirror.example.com/cuda/3bf863cc.pub",
    "docker_package": "docker-ce",
}

_CUDA_RELEASE = re.compile(r"\d+\.\d+")
_CUDA_PACKAGE_VERSION = re.compile(r"\d+\.\d+\.\d+")
# Debian policy: lower case letters, digits, + - and . ; at least two, the first alphanumeric.
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest].
_IMAGE_DOMAIN_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = rf"{_IMAGE_DOMAIN_COMPONENT}(?:\.{_IMAGE_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_IMAGE_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_PATH_COMPONENT}(?:/{_IMAGE_PATH_COMPONENT})*"
    r"(?::\w[\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_NO_CONTROL_CHARACTERS = re.compile(r"[^\x00-\x1f\x7f]*")

# String keys that become package names, pins, image references and paths: their shape, and
# what the message says when a value does not have it.
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "nvidia_driver_branch": (compat.DRIVER_BRANCH, "is not a driver branch; use e.g. '470'"),
    "nvidia_driver_version": (
        compat.DRIVER_VERSION,
        "is not a driver version; use the full upstream version, e.g. '470.182.03'",
    ),
    "cuda_version": (_CUDA_RELEASE, "is not a CUDA release; use major.minor, e.g. '11.2'"),
    "cuda_package_version": (
        _CUDA_PACKAGE_VERSION,
        "is not a full CUDA toolkit release; use e.g. '11.2.2'",
    ),
    "cudnn_version": (
        compat.CUDNN_VERSION,
        "is not a full cuDNN package version; use e.g. '8.1.1.33'",
    ),
    "nvidia_container_toolkit_version": (
        compat.CONTAINER_TOOLKIT_VERSION,
        "is not a 1.x toolkit release; use e.g. '1.17.4'",
    ),
    "docker_package": (_DEBIAN_PACKAGE, "is not a Debian package name; use e.g. 'docker-ce'"),
    "tensorflow_image": (
        _IMAGE_REFERENCE,
        "is not a docker image reference; use e.g. 'tensorflow/tensorflow:2.9.0-gpu'",
    ),
    "gpu_results_dir": (
        _NO_CONTROL_CHARACTERS,
        "contains a control character; use a plain folder path, e.g. 'results'",
    ),
    "nvidia_cuda_repo_key_url": (
        _NO_CONTROL_CHARACTERS,
        "contains a control character; use a URL or a controller path, e.g. 'keys/cuda.pub'",
    ),
    "nvidia_container_repo_key_url": (
        _NO_CONTROL_CHARACTERS,
        "contains a control character; use a URL or a controller path, e.g. 'keys/container.pub'",
    ),
}


def _redacted(value: Any) -> Any:
    """``value`` with the credentials of every URL in it replaced."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redacted(key): _redacted(item) for key, item in value.items()}
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(map(_redacted, value))
    return value


def _shown(value: Any) -> str:
    """``value`` as a message shows it: repr, never with a URL's `user:password@`."""
    return repr(_redacted(value))


def _whole_number_problem(key: str, value: Any) -> str | None:
    least, meaning, example = _WHOLE_NUMBERS[key]
    if value is None and key in _OPTIONAL:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= least:
        return None
    if not isinstance(value, str):
        return f"{key} = {_shown(value)} must be {meaning}, e.g. {example}"
    # A quoted number ('2'), from YAML or JSON, is refused like any string; the message shows
    # it unquoted.
    if value.strip().isdecimal() and int(value) >= least:
        example = int(value)
    return (
        f"{key} = {_shown(value)} must be {meaning}, e.g. {example} "
        f"(not the string {_shown(value)})"
    )


def _json_problems(path: str, value: Any) -> list[str]:
    """
    Why ``value``, at ``path`` in docker_daemon_config, would not come back unchanged from
    daemon.json: json.dumps refuses sets and bytes, writes NaN that dockerd cannot read, and
    turns tuples into lists and other keys into strings, which then never equal the file's (a
    rewrite and a docker restart on every run).
    """
    if isinstance(value, dict):
        problems = []
        for key, item in value.items():
            if isinstance(key, str):
                problems += _json_problems(f"{path}[{key!r}]", item)
            else:
                problems.append(
                    f"{path} has the key {_shown(key)}; daemon.json keys are strings, "
                    f"e.g. {str(key)!r}"
                )
        return problems
    if isinstance(value, list):
        return [
            problem
            for index, item in enumerate(value)
            for problem in _json_problems(f"{path}[{index}]", item)
        ]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value!r} is not a JSON number; use a finite number"]
    if value is None or isinstance(value, (str, int, float)):  # bool is an int
        return []
    return [
        f"{path} = {_shown(value)} is not a JSON value ({type(value).__name__}); use a string, "
        "a number, true/false, None, a list or a mapping"
    ]


def _daemon_config_problems(config: Any) -> list[str]:
    if not isinstance(config, dict):
        return [
            f"docker_daemon_config = {_shown(config)} must be a mapping of daemon.json keys to "
            "values, e.g. {'default-shm-size': '1G'}"
        ]
    problems = _json_problems("docker_daemon_config", config)
    if "hosts" in config:
        problems.append(
            f"docker_daemon_config['hosts'] = {_shown(config['hosts'])} cannot be set: "
            "docker.service starts dockerd with -H fd://, and dockerd refuses to start with "
            'hosts in both ("the following directives are specified both as a flag and in the '
            'configuration file: hosts"); add -H flags to ExecStart in a docker.service drop-in '
            "instead"
        )
    return problems


def _value_problems(key: str, value: Any) -> list[str]:
    """Why ``value`` cannot be data key ``key``'s, each a whole message; none when it can."""
    if key in _BOOLEANS:
        return [] if isinstance(value, bool) else [f"{key} = {_shown(value)} must be true or false"]
    if key in _WHOLE_NUMBERS:
        problem = _whole_number_problem(key, value)
        return [problem] if problem else []
    if key == "docker_daemon_config":
        return _daemon_config_problems(value)
    if value is None and key in _OPTIONAL:
        return []
    if not isinstance(value, str) or not value.strip():
        example = DATA_DEFAULTS[key] or _EXAMPLES[key]
        return [f"{key} = {_shown(value)} must be a string, e.g. {example!r}"]
    if key in _REPOSITORY_URLS or (key in _KEY_LOCATIONS and "://" in value):
        problem = url_problem(key, value)
        return [problem] if problem else []
    if key in _FORMATS:
        pattern, problem = _FORMATS[key]
        return [] if pattern.fullmatch(value) else [f"{key} = {_shown(value)} {problem}"]
    return []


def _unknown_keys(keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """
    (problems, warnings) for the keys gpufleet does not know: one close to a known key is a
    misspelling of it; another with a gpufleet prefix may be a different deploy's, so only
    logged. pyinfra's own keys (ssh_user, _sudo, docker_identifier...) are neither.
    """
    problems = []
    warnings = []
    for key in sorted(keys):
        if key in DATA_DEFAULTS or key in PYINFRA_DATA_KEYS:
            continue
        known = difflib.get_close_matches(key, DATA_DEFAULTS, n=1, cutoff=TYPO_CUTOFF)
        if known:
            problems.append(f"{key} is not a gpufleet data key; did you mean {known[0]}?")
        elif key.startswith(GPUFLEET_KEY_PREFIXES):
            warnings.append(
                f"{key} is not a gpufleet data key, nor close to one; gpufleet ignores it"
            )
    return problems, warnings


def read_settings(data: InventoryData) -> GpuSettings:
    """
    Read and check every gpufleet key; all problems are reported at once.

    Unknown keys that look like gpufleet's but are no misspelling come back in
    ``GpuSettings.warnings``, for the deploy to log.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, default in DATA_DEFAULTS.items():
        value = data.get(key, default)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in _NOT_STRINGS
        ):
            # YAML-ish inventories write 11.2 or 470 unquoted; the string is what was meant.
            value = str(value)
        problems += _value_problems(key, value)
        values[key] = value
    typos, warnings = _unknown_keys(data.keys() if isinstance(data, Mapping) else data.dict())
    problems += typos
    if problems:
        raise SettingsError("invalid gpufleet data:\n" + "\n".join(f"  - {p}" for p in problems))
    if values["docker_package"] is None:
        values["docker_package"] = "docker.io"
    return GpuSettings(**values, warnings=tuple(warnings))
