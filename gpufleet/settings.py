"""
gpufleet's inventory interface: the data keys, their defaults and their types, as one model.

Only the entry @deploy functions call `read_settings(host.data)`; everything below them takes
plain values. Every value is checked here, before anything builds a package name, a path or an
apt source line from it; a misspelt key is refused rather than silently left to its default.
Each refusal names the key, the value (a URL's credentials redacted) and what would work.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Annotated, Any, NoReturn, Protocol, TypeAlias, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError
from pyinfra.api.exceptions import DeployError

from gpufleet.stack import accounts, catalog, compat, dcgm, mig, nccl, slurm
from gpufleet.stack.installers import SHA256, CudaInstallMethod, CudnnInstallMethod
from gpufleet.stack.slurm import Scheduler
from gpufleet.stack.urls import redact, url_problem

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
    """pyinfra's HostData (`host.data`): all its keys, flattened, with dict()."""

    def dict(self) -> Mapping[str, Any]: ...


# host.data, or a plain mapping of data keys (the rollout's inventory dump, tests).
InventoryData: TypeAlias = "DataSource | Mapping[str, Any]"

# The pydantic error type of gpufleet's refusals; its context holds the whole messages.
DATA_PROBLEM = "gpufleet_data_problem"

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
# An absolute path of plain characters, safe in a shell-sourced file without quoting issues.
_HOST_PATH = re.compile(r"/[A-Za-z0-9._+/-]+")
# A container registry as image references name it: host[:port][/path].
_REGISTRY = re.compile(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._/-]+)?")
# What follows a kernel's ABI in its release and in Canonical's module packages' names.
_KERNEL_FLAVOUR = re.compile(r"[a-z][a-z0-9.-]*")


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


def _refuse(*problems: str) -> NoReturn:
    raise PydanticCustomError(DATA_PROBLEM, "{problems}", {"problems": problems})


def _default(key: str) -> Any:
    return GpuSettings.model_fields[key].get_default(call_default_factory=True)


def _example(key: str) -> Any:
    """A value that works for ``key``: its default, or its example where the default is None."""
    examples = GpuSettings.model_fields[key].examples or [None]
    return _default(key) or examples[0]


def _key(info: ValidationInfo) -> str:
    """The data key being checked (these validators only ever check fields)."""
    return cast(str, info.field_name)


def _none_is_default(value: Any, info: ValidationInfo) -> Any:
    return _default(_key(info)) if value is None else value


def _flag(value: Any, info: ValidationInfo) -> bool:
    if not isinstance(value, bool):
        _refuse(f"{_key(info)} = {_shown(value)} must be true or false")
    return value


def _optional_flag(value: Any, info: ValidationInfo) -> bool | None:
    return None if value is None else _flag(value, info)


def _user_names(value: Any, info: ValidationInfo) -> list[str]:
    key = _key(info)
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        _refuse(f"{key} = {_shown(value)} must be a list of user names, e.g. ['alice']")
    bad = [name for name in value if not accounts.USER_NAME.fullmatch(name)]
    if bad:
        _refuse(
            f"{key} has {', '.join(_shown(name) for name in bad)}: not a user name (a lower case "
            "letter, then lower case letters, digits, '-' or '_'), e.g. ['alice']"
        )
    return list(value)


def _mig_layouts(value: Any, info: ValidationInfo) -> dict[int, list[str]]:
    key = _key(info)
    example = "{0: ['3g.40gb', '2g.20gb', '1g.10gb', '1g.10gb'], 1: []}"
    if not isinstance(value, dict):
        _refuse(
            f"{key} = {_shown(value)} must map GPU indexes to lists of MIG profiles "
            f"([] disables MIG), e.g. {example}"
        )
    layouts: dict[int, list[str]] = {}
    problems = []
    for index, profiles in value.items():
        # JSON and YAML inventories may write the index as a string.
        number = int(index) if isinstance(index, str) and index.isdecimal() else index
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            problems.append(f"{key} has the GPU index {_shown(index)}: use 0, 1, ...")
            continue
        if not isinstance(profiles, (list, tuple)) or not all(
            isinstance(name, str) and mig.PROFILE_NAME.fullmatch(name) for name in profiles
        ):
            problems.append(
                f"{key}[{number}] = {_shown(profiles)} must be a list of MIG profile names as "
                "nvidia-smi mig -lgip prints them without 'MIG ', e.g. ['3g.40gb', '1g.10gb'] "
                "([] disables MIG)"
            )
            continue
        layouts[number] = list(profiles)
    if problems:
        _refuse(*problems)
    return layouts


def _whole_number(least: int, meaning: str, example: int) -> BeforeValidator:
    """At least ``least``, written as a number; ``meaning`` is what the number counts."""

    def check(value: Any, info: ValidationInfo) -> Any:
        key = _key(info)
        if value is None and _default(key) is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= least:
            return value
        if not isinstance(value, str):
            _refuse(f"{key} = {_shown(value)} must be {meaning}, e.g. {example}")
        # A quoted number ('2'), from YAML or JSON, is refused like any string; the message
        # shows it unquoted.
        shown_example = int(value) if value.strip().isdecimal() and int(value) >= least else example
        _refuse(
            f"{key} = {_shown(value)} must be {meaning}, e.g. {shown_example} "
            f"(not the string {_shown(value)})"
        )

    return BeforeValidator(check)


def _text(problem: Callable[[str, str], str | None]) -> BeforeValidator:
    """A string key; ``problem(key, value)`` says what is wrong with a string's content."""

    def check(value: Any, info: ValidationInfo) -> Any:
        key = _key(info)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML-ish inventories write 11.2 or 470 unquoted; the string is what was meant.
            value = str(value)
        if value is None and _default(key) is None:
            return None
        if not isinstance(value, str) or not value.strip():
            _refuse(f"{key} = {_shown(value)} must be a string, e.g. {_example(key)!r}")
        found = problem(key, value)
        if found:
            _refuse(found)
        return value

    return BeforeValidator(check)


def _shaped(pattern: re.Pattern[str], problem: str) -> BeforeValidator:
    """A string of ``pattern``'s shape; ``problem`` says what other values are not, and the fix."""
    return _text(
        lambda key, value: (
            None if pattern.fullmatch(value) else f"{key} = {_shown(value)} {problem}"
        )
    )


def _fetched_location(example: str, query: bool = False) -> BeforeValidator:
    """Fetched on the controller: a URL (``query``: a signed download URL's ?query too), or a
    path there."""

    def problem(key: str, value: str) -> str | None:
        if "://" in value:
            return url_problem(key, value, query=query)
        if _NO_CONTROL_CHARACTERS.fullmatch(value):
            return None
        return (
            f"{key} = {_shown(value)} contains a control character; use a URL or a controller "
            f"path, e.g. {example!r}"
        )

    return _text(problem)


def _choice(enum: type[Enum]) -> BeforeValidator:
    """One of the enum's values, as a string."""
    values = [member.value for member in enum]
    shown = [repr(value) for value in values]
    listed = f"{', '.join(shown[:-1])} or {shown[-1]}"
    return _text(
        lambda key, value: None if value in values else f"{key} = {_shown(value)} must be {listed}"
    )


def _count_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _lower_sha256(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _daemon_config(config: Any) -> Any:
    if not isinstance(config, dict):
        _refuse(
            f"docker_daemon_config = {_shown(config)} must be a mapping of daemon.json keys to "
            "values, e.g. {'default-shm-size': '1G'}"
        )
    problems = _json_problems("docker_daemon_config", config)
    if "hosts" in config:
        problems.append(
            f"docker_daemon_config['hosts'] = {_shown(config['hosts'])} cannot be set: "
            "docker.service starts dockerd with -H fd://, and dockerd refuses to start with "
            'hosts in both ("the following directives are specified both as a flag and in the '
            'configuration file: hosts"); add -H flags to ExecStart in a docker.service drop-in '
            "instead"
        )
    if problems:
        _refuse(*problems)
    return config


Flag = Annotated[bool, BeforeValidator(_flag)]
# A pinned sha256 digest (64 hex digits; upper case is read as lower).
Sha256 = Annotated[
    str | None,
    _shaped(SHA256, "is not a sha256 digest; use the 64 hex digits sha256sum prints"),
    BeforeValidator(_lower_sha256),
]
# Any non-blank string (a fingerprint, a runtime name: checked where they are used).
Text = _text(lambda key, value: None)
# Written into `deb [signed-by=...] URL /` as one word.
RepositoryUrl = _text(url_problem)


class GpuSettings(BaseModel):
    """gpufleet's data keys: each field's default is the key's default."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # None: R580 where the host's NVIDIA repository carries it, else the newest branch it
    # carries that gpufleet pins a release of (compat.DEFAULT_DRIVER_BRANCH).
    nvidia_driver_branch: Annotated[
        str | None, _shaped(compat.DRIVER_BRANCH, "is not a driver branch; use e.g. '580'")
    ] = Field(default=None, examples=["580"])
    # None: gpufleet's pinned release of the branch (compat.DRIVER_RELEASES).
    nvidia_driver_version: Annotated[
        str | None,
        _shaped(
            compat.DRIVER_VERSION,
            "is not a driver version; use the full upstream version, e.g. '580.126.16'",
        ),
    ] = Field(default=None, examples=["580.126.16"])
    # None: per host from its GPUs (stack/hardware.py: open where a GPU needs them or for data
    # center GPUs from R515, proprietary for GPUs before Turing), else open from R560.
    nvidia_kernel_modules: Annotated[
        catalog.KernelModules | None, _choice(catalog.KernelModules)
    ] = Field(default=None, examples=["open"])
    # The compute part of the driver only (no X server, no graphics libraries); false: all of it.
    nvidia_driver_headless: Flag = True
    # nvidia: NVIDIA's CUDA repository (modules built by DKMS); ubuntu: Ubuntu's archive, with
    # Canonical's signed precompiled modules (Ubuntu hosts; Secure Boot without a MOK).
    nvidia_driver_source: Annotated[catalog.DriverSource, _choice(catalog.DriverSource)] = (
        catalog.DriverSource.NVIDIA
    )
    # Ubuntu's archive: the kernel flavour of its signed modules (None: the running kernel's).
    nvidia_kernel_flavour: Annotated[
        str | None,
        _shaped(_KERNEL_FLAVOUR, "is not a kernel flavour; use e.g. 'generic' or 'aws'"),
    ] = Field(default=None, examples=["generic"])
    # Secure Boot hosts: the enrolled Machine Owner Key DKMS signs the NVIDIA modules with
    # (paths on the host; DKMS's framework configuration is shell, hence the strict shape).
    nvidia_module_signing_key: Annotated[
        str | None,
        _shaped(_HOST_PATH, "is not an absolute path on the host; use e.g. '/root/mok/MOK.priv'"),
    ] = Field(default=None, examples=["/var/lib/shim-signed/mok/MOK.priv"])
    nvidia_module_signing_cert: Annotated[
        str | None,
        _shaped(_HOST_PATH, "is not an absolute path on the host; use e.g. '/root/mok/MOK.der'"),
    ] = Field(default=None, examples=["/var/lib/shim-signed/mok/MOK.der"])
    cuda_version: Annotated[
        str, _shaped(_CUDA_RELEASE, "is not a CUDA release; use major.minor, e.g. '11.2'")
    ] = "11.2"
    cuda_package_version: Annotated[
        str,
        _shaped(_CUDA_PACKAGE_VERSION, "is not a full CUDA toolkit release; use e.g. '11.2.2'"),
    ] = "11.2.2"
    cudnn_version: Annotated[
        str,
        _shaped(compat.CUDNN_VERSION, "is not a full cuDNN package version; use e.g. '8.1.1.33'"),
    ] = "8.1.1.33"
    # auto: apt where the host's CUDA repository offers the pinned toolkit, else the runfile.
    cuda_install_method: Annotated[CudaInstallMethod, _choice(CudaInstallMethod)] = (
        CudaInstallMethod.AUTO
    )
    # None: NVIDIA's runfile of cuda_package_version (installers.runfile_url).
    cuda_runfile_url: Annotated[
        str | None, _fetched_location("cuda_11.2.2_460.32.03_linux.run", query=True)
    ] = Field(
        default=None, examples=["https://artifacts.example.com/cuda_11.2.2_460.32.03_linux.run"]
    )
    # No default: NVIDIA publishes md5 sums of its runfiles only.
    cuda_runfile_sha256: Sha256 = Field(default=None, examples=["0" * 64])
    # auto: apt where the host's CUDA repository offers the build for the toolkit, else the
    # archive (which NVIDIA publishes behind a developer login: no default URL).
    cudnn_install_method: Annotated[CudnnInstallMethod, _choice(CudnnInstallMethod)] = (
        CudnnInstallMethod.AUTO
    )
    cudnn_archive_url: Annotated[
        str | None, _fetched_location("cudnn-11.2-linux-x64-v8.1.1.33.tgz", query=True)
    ] = Field(
        default=None, examples=["https://artifacts.example.com/cudnn-11.2-linux-x64-v8.1.1.33.tgz"]
    )
    cudnn_archive_sha256: Sha256 = Field(default=None, examples=["0" * 64])
    # None: NVIDIA's repository for the host's OS release.
    nvidia_cuda_repo_url: Annotated[str | None, RepositoryUrl] = Field(
        default=None, examples=["https://mirror.example.com/cuda/ubuntu2004/x86_64/"]
    )
    # None: 3bf863cc.pub inside the CUDA repository.
    nvidia_cuda_repo_key_url: Annotated[str | None, _fetched_location("keys/cuda.pub")] = Field(
        default=None, examples=["https://mirror.example.com/cuda/3bf863cc.pub"]
    )
    # None: the key NVIDIA signs the host's repository with (3bf863cc; debian13: 8793F200).
    nvidia_cuda_repo_key_fingerprint: Annotated[str | None, Text] = Field(
        default=None, examples=["EB693B3035CD5710E231E123A4B469963BF863CC"]
    )
    nvidia_container_repo_url: Annotated[str, RepositoryUrl] = compat.NVIDIA_CONTAINER_REPO_URL
    nvidia_container_repo_key_url: Annotated[str, _fetched_location("keys/container.pub")] = (
        compat.NVIDIA_CONTAINER_KEY_URL
    )
    nvidia_container_repo_key_fingerprint: Annotated[str, Text] = (
        compat.NVIDIA_CONTAINER_KEY_FINGERPRINT
    )
    nvidia_container_toolkit_version: Annotated[
        str,
        _shaped(
            compat.CONTAINER_TOOLKIT_VERSION, "is not a 1.x toolkit release; use e.g. '1.17.8'"
        ),
    ] = "1.17.8"
    # None (as older inventories write it): the default.
    docker_package: Annotated[
        str,
        _shaped(_DEBIAN_PACKAGE, "is not a Debian package name; use e.g. 'docker-ce'"),
        BeforeValidator(_none_is_default),
    ] = catalog.DOCKER_PACKAGE
    # None: leave daemon.json's default-runtime alone.
    docker_default_runtime: Annotated[str | None, Text] = "nvidia"
    docker_daemon_config: Annotated[dict[str, Any], BeforeValidator(_daemon_config)] = Field(
        default_factory=dict
    )
    # Restart docker for a daemon.json change even while containers run (stopping them, unless
    # live-restore is on).
    docker_restart_with_running_containers: Flag = False
    gpu_reboot_allowed: Flag = False
    # Seconds a package change waits for another process's dpkg/apt lock before failing the host.
    gpu_apt_lock_timeout: Annotated[
        int, _whole_number(0, "a whole number of seconds (0 or more)", 600)
    ] = 600
    tensorflow_image: Annotated[
        str,
        _shaped(
            _IMAGE_REFERENCE,
            "is not a docker image reference; use e.g. 'tensorflow/tensorflow:2.9.0-gpu'",
        ),
    ] = "tensorflow/tensorflow:2.9.0-gpu"
    # Pull tensorflow_image as <mirror>/<image> (host[:port][/path]) and tag it: registries
    # other than Docker Hub, which daemon.json's registry-mirrors do not cover.
    tensorflow_image_registry_mirror: Annotated[
        str | None,
        _shaped(_REGISTRY, "is not a registry; use host[:port][/path], e.g. 'registry.local:5000'"),
    ] = Field(default=None, examples=["registry.local:5000"])
    # Seconds the pull of tensorflow_image may take (the GPU images are gigabytes).
    tensorflow_image_pull_timeout: Annotated[
        int, _whole_number(1, "a whole number of seconds (at least 1)", 1800)
    ] = 1800
    # Install the stack even where tensorflow_image does not support a GPU of the host.
    gpu_allow_unsupported_framework: Flag = False
    # Verification (deploys/verify.py), run at the end of gpu_host unless gpu_verify is false.
    gpu_verify: Flag = True
    # A `docker save` archive of tensorflow_image, loaded where the image is absent (hosts that
    # cannot pull it); fetched by the controller, like the CUDA runfile and the cuDNN archive.
    tensorflow_image_archive_url: Annotated[
        str | None, _fetched_location("tf-2.9.0-gpu.tar", query=True)
    ] = Field(default=None, examples=["https://artifacts.example.com/tensorflow-2.9.0-gpu.tar"])
    tensorflow_image_archive_sha256: Sha256 = Field(default=None, examples=["0" * 64])
    # None: the user's cache folder ($XDG_CACHE_HOME or ~/.cache)/gpufleet/artifacts.
    gpu_artifact_cache: Annotated[
        str | None,
        _shaped(
            _NO_CONTROL_CHARACTERS,
            "contains a control character; use a plain folder path, e.g. 'artifacts'",
        ),
    ] = Field(default=None, examples=["~/.cache/gpufleet/artifacts"])
    # None: at least one GPU.
    gpu_expected_count: Annotated[
        int | None,
        _whole_number(1, "a whole number of GPUs (at least 1), or None for at least one", 8),
    ] = None
    # Run the TensorFlow smoke test (the framework layer) in tensorflow_image.
    gpu_smoke_test: Flag = True
    # Also run it on the host, in a virtualenv with TensorFlow 2.9 (needs Python 3.7 to 3.10).
    tensorflow_host_test: Flag = False
    # Folder on the controller (relative to where pyinfra runs) for the per-host result JSON.
    gpu_results_dir: Annotated[
        str,
        _shaped(
            _NO_CONTROL_CHARACTERS,
            "contains a control character; use a plain folder path, e.g. 'results'",
        ),
    ] = "results"
    # Driver upgrades (deploys/driver_upgrade.py, gpufleet rollout): hosts per batch, whether
    # GPU containers may be stopped, and whether the verification includes the smoke test.
    upgrade_batch_size: Annotated[
        int, _whole_number(1, "a whole number of hosts (at least 1)", 2)
    ] = 1
    upgrade_drain: Flag = False
    upgrade_smoke_test: Flag = False
    # Users put in the docker group (none created; gpufleet takes out only those it put in).
    docker_users: Annotated[list[str], BeforeValidator(_user_names)] = Field(
        default_factory=list, examples=[["alice"]]
    )
    # /etc/nccl.conf: NCCL_SOCKET_IFNAME (checked against the host's interfaces),
    # NCCL_IB_DISABLE and NCCL_DEBUG; None leaves the variable out.
    nccl_socket_ifname: Annotated[
        str | None,
        _shaped(
            nccl.SOCKET_IFNAME,
            "is not an NCCL_SOCKET_IFNAME list of interface names; use e.g. '=eth0', 'eth' or "
            "'^docker,lo'",
        ),
    ] = Field(default=None, examples=["=eth0"])
    nccl_ib_disable: Annotated[bool | None, BeforeValidator(_optional_flag)] = None
    nccl_debug: Annotated[nccl.NcclDebug | None, _choice(nccl.NcclDebug)] = None
    # NVIDIA DCGM pinned for the driver branch, nv-hostengine running, and `dcgmi diag -r LEVEL`
    # in the verification (1: software, seconds; 2: + PCIe and memory; 3: + GEMM and stress).
    gpu_dcgm: Flag = False
    gpu_dcgm_diag_level: Annotated[
        int, _whole_number(1, "a dcgmi diag level (1, 2 or 3)", dcgm.DEFAULT_DIAG_LEVEL)
    ] = dcgm.DEFAULT_DIAG_LEVEL
    # GPU index -> the MIG GPU instances it holds, each with its compute instance ([]: MIG
    # disabled); GPUs left out are left alone. Kept across reboots by a boot unit.
    gpu_mig_layouts: Annotated[dict[int, list[str]], BeforeValidator(_mig_layouts)] = Field(
        default_factory=dict, examples=[{0: ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]}]
    )
    # Rollout rules (gpufleet rollout): hosts out of service at once ("2" or "25%" of the fleet;
    # None: upgrade_batch_size), failures after which no new host is started, and a host the
    # rollouts leave alone.
    upgrade_max_unavailable: Annotated[
        str | None,
        _shaped(
            slurm.MAX_UNAVAILABLE, "is not a host count or a percentage; use e.g. '2' or '25%'"
        ),
        # A count may be written as a number (runs first: pydantic applies these last to first).
        BeforeValidator(_count_as_text),
    ] = Field(default=None, examples=["25%"])
    upgrade_max_failed: Annotated[
        int, _whole_number(1, "a whole number of failed hosts (at least 1)", 2)
    ] = 1
    upgrade_skip: Flag = False
    # The scheduler a rollout asks before it takes a host out of service: "none" (GPU users from
    # nvidia-smi and docker) or "slurm" (drain the node, wait for its jobs, resume it).
    gpu_scheduler: Annotated[Scheduler, _choice(Scheduler)] = Scheduler.NONE
    # None: the host's short hostname.
    slurm_node_name: Annotated[
        str | None, _shaped(slurm.NODE_NAME, "is not a Slurm node name; use e.g. 'gpu-01'")
    ] = Field(default=None, examples=["gpu-01"])
    # Seconds to wait for a drained node's jobs; None: as long as they run.
    upgrade_drain_timeout: Annotated[
        int | None,
        _whole_number(
            1, "a whole number of seconds (at least 1), or None to wait for the jobs", 3600
        ),
    ] = None

    # Unknown keys that look like gpufleet's but are not a misspelling of one: for the log.
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._warnings

    @property
    def stack_request(self) -> compat.StackRequest:
        return compat.StackRequest(
            nvidia_driver_branch=self.nvidia_driver_branch,
            nvidia_driver_version=self.nvidia_driver_version,
            nvidia_kernel_modules=self.nvidia_kernel_modules,
            nvidia_driver_headless=self.nvidia_driver_headless,
            cuda_version=self.cuda_version,
            cuda_package_version=self.cuda_package_version,
            cudnn_version=self.cudnn_version,
            nvidia_container_toolkit_version=self.nvidia_container_toolkit_version,
            tensorflow_image=self.tensorflow_image,
            nvidia_cuda_repo_url=self.nvidia_cuda_repo_url,
            cuda_install_method=self.cuda_install_method,
            cudnn_install_method=self.cudnn_install_method,
            allow_unsupported_framework=self.gpu_allow_unsupported_framework,
            nvidia_driver_source=self.nvidia_driver_source,
            nvidia_kernel_flavour=self.nvidia_kernel_flavour,
            module_signing_key=self.nvidia_module_signing_key,
            module_signing_cert=self.nvidia_module_signing_cert,
        )

    @property
    def mig_creation_layouts(self) -> dict[int, list[str]]:
        """gpu_mig_layouts with each GPU's profiles in the order they are created."""
        return {
            index: mig.creation_order(profiles) for index, profiles in self.gpu_mig_layouts.items()
        }

    @property
    def nccl_settings(self) -> nccl.NcclSettings:
        debug = self.nccl_debug.value if self.nccl_debug is not None else None
        return nccl.NcclSettings(self.nccl_socket_ifname, self.nccl_ib_disable, debug)

    @property
    def module_signing(self) -> tuple[str, str] | None:
        """The Machine Owner Key's (private key, certificate) paths on the host, when both set."""
        key, cert = self.nvidia_module_signing_key, self.nvidia_module_signing_cert
        return (key, cert) if key and cert else None

    def cuda_repo_key_url(self, plan: compat.StackPlan) -> str:
        return self.nvidia_cuda_repo_key_url or compat.repository_key_url(
            plan.repository_url, plan.repository
        )

    def cuda_repo_key_fingerprint(self, plan: compat.StackPlan) -> str:
        return self.nvidia_cuda_repo_key_fingerprint or compat.repository_key_fingerprint(
            plan.repository
        )


# pyinfra's @deploy(data_defaults=...): the model's defaults, as data.
DATA_DEFAULTS: dict[str, Any] = {key: _default(key) for key in GpuSettings.model_fields}


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


def _problems(error: ValidationError) -> list[str]:
    """The messages of ``error``, each naming its key, the value and what would work."""
    problems: list[str] = []
    for detail in error.errors():
        if detail["type"] == DATA_PROBLEM:
            problems += detail["ctx"]["problems"]
        else:
            key = ".".join(map(str, detail["loc"]))
            problems.append(f"{key} = {_shown(detail['input'])}: {detail['msg']}")
    return problems


def read_settings(data: InventoryData) -> GpuSettings:
    """
    Read and check every gpufleet key; all problems are reported at once.

    Unknown keys that look like gpufleet's but are no misspelling come back in
    ``GpuSettings.warnings``, for the deploy to log.
    """
    given = data if isinstance(data, Mapping) else data.dict()
    typos, warnings = _unknown_keys(given)
    try:
        settings = GpuSettings.model_validate(dict(given))
    except ValidationError as error:
        raise SettingsError(_report(_problems(error) + typos)) from None
    if typos:
        raise SettingsError(_report(typos))
    settings._warnings = tuple(warnings)
    return settings


def _report(problems: list[str]) -> str:
    return "invalid gpufleet data:\n" + "\n".join(f"  - {problem}" for problem in problems)
