"""
Inventory data checks: every refusal names the key, the value (never a URL's credentials) and
what would work; misspelt keys are refused; pyinfra's own keys are never reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Inventory
from pyinfra.api.arguments import all_global_arguments
from pyinfra.api.connectors import get_all_connectors

from gpufleet.settings import (
    DATA_DEFAULTS,
    GPUFLEET_KEY_PREFIXES,
    PYINFRA_DATA_KEYS,
    GpuSettings,
    SettingsError,
    read_settings,
)
from gpufleet.stack import compat
from gpufleet.stack.catalog import DriverChoice, KernelModules
from gpufleet.stack.installers import CudaInstallMethod, CudnnInstallMethod, InstallMethods
from gpufleet.stack.repositories import CUDA_REPOSITORIES, DriverNaming

INJECTION_URL = "https://x/ /\ndeb [trusted=yes] http://X/ /\n#"
CREDENTIALS_URL = "https://user:s3cret@mirror.example.com/cuda/"


def problems_of(data: dict[str, Any]) -> list[str]:
    """The listed problems of the SettingsError that ``data`` raises."""
    with pytest.raises(SettingsError) as raised:
        read_settings(data)
    header, *listing = str(raised.value).splitlines()
    assert header == "invalid gpufleet data:"
    return [line.removeprefix("  - ") for line in listing]


def test_the_defaults_pass_with_the_new_keys() -> None:
    settings = read_settings({})
    assert settings.gpu_apt_lock_timeout == 600
    assert settings.docker_restart_with_running_containers is False
    assert settings.warnings == ()


def test_the_data_defaults_are_the_models_and_pass() -> None:
    assert read_settings(DATA_DEFAULTS) == read_settings({})
    assert DATA_DEFAULTS["docker_package"] == "docker.io"
    # Older inventories write None for the OS's own docker.
    assert read_settings({"docker_package": None}).docker_package == "docker.io"


def test_new_keys_are_read() -> None:
    settings = read_settings(
        {"gpu_apt_lock_timeout": 0, "docker_restart_with_running_containers": True}
    )
    assert settings.gpu_apt_lock_timeout == 0
    assert settings.docker_restart_with_running_containers is True


def test_the_driver_defaults_leave_the_choice_to_the_hosts_plan() -> None:
    settings = read_settings({})
    # None: the host's OS (its NVIDIA repository) decides; see tests/unit/test_compat.py.
    assert settings.nvidia_driver_branch is None
    assert settings.nvidia_driver_version is None
    assert settings.nvidia_kernel_modules is None
    assert settings.nvidia_cuda_repo_key_fingerprint is None
    assert settings.nvidia_driver_headless is True
    assert settings.nvidia_container_toolkit_version == "1.17.8"


@pytest.mark.parametrize(
    ("value", "modules"),
    [("open", KernelModules.OPEN), ("proprietary", KernelModules.PROPRIETARY), (None, None)],
)
def test_kernel_module_flavours_are_accepted(value: str | None, modules: KernelModules) -> None:
    settings = read_settings({"nvidia_kernel_modules": value})
    assert settings.nvidia_kernel_modules is modules
    assert settings.stack_request.nvidia_kernel_modules is modules


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Open", "nvidia_kernel_modules = 'Open' must be 'open' or 'proprietary'"),
        ("nvidia-open", "nvidia_kernel_modules = 'nvidia-open' must be 'open' or 'proprietary'"),
        ("", "nvidia_kernel_modules = '' must be a string, e.g. 'open'"),
        (True, "nvidia_kernel_modules = True must be a string, e.g. 'open'"),
        (["open"], "nvidia_kernel_modules = ['open'] must be a string, e.g. 'open'"),
    ],
)
def test_other_kernel_module_flavours_are_refused(value: Any, problem: str) -> None:
    assert problems_of({"nvidia_kernel_modules": value}) == [problem]


def test_the_full_driver_is_a_flag() -> None:
    settings = read_settings({"nvidia_driver_headless": False})
    assert settings.stack_request.nvidia_driver_headless is False
    assert problems_of({"nvidia_driver_headless": "false"}) == [
        "nvidia_driver_headless = 'false' must be true or false"
    ]


DEBIAN_13_PLAN = compat.StackPlan(
    CUDA_REPOSITORIES["debian13"],
    "https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64/",
    DriverChoice(DriverNaming.DEBIAN, "590", "590.48.01", KernelModules.OPEN, True),
    InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.ARCHIVE),
)


def test_the_cuda_key_defaults_to_the_one_of_the_hosts_repository() -> None:
    settings = read_settings({})
    assert settings.cuda_repo_key_url(DEBIAN_13_PLAN) == (
        "https://developer.download.nvidia.com/compute/cuda/repos/debian13/x86_64/8793F200.pub"
    )
    assert settings.cuda_repo_key_fingerprint(DEBIAN_13_PLAN) == (
        "02182E60104FCDC26EAE1B8597A5D4CB8793F200"
    )
    # A mirror of no repository gpufleet knows: NVIDIA's 3bf863cc, beside its InRelease.
    mirror = compat.StackPlan(
        None, "https://mirror.example.com/cuda/", DEBIAN_13_PLAN.driver, DEBIAN_13_PLAN.methods
    )
    assert settings.cuda_repo_key_url(mirror) == "https://mirror.example.com/cuda/3bf863cc.pub"
    assert settings.cuda_repo_key_fingerprint(mirror) == (
        "EB693B3035CD5710E231E123A4B469963BF863CC"
    )


def test_the_cuda_key_settings_win_over_the_repositorys() -> None:
    settings = read_settings(
        {
            "nvidia_cuda_repo_key_url": "https://mirror.example.com/cuda/key.pub",
            "nvidia_cuda_repo_key_fingerprint": "4EB9E934471256AEDAE2AB1FC6607FBBA0D62461",
        }
    )
    assert settings.cuda_repo_key_url(DEBIAN_13_PLAN) == "https://mirror.example.com/cuda/key.pub"
    assert settings.cuda_repo_key_fingerprint(DEBIAN_13_PLAN) == (
        "4EB9E934471256AEDAE2AB1FC6607FBBA0D62461"
    )


def test_an_apt_source_line_injection_is_refused() -> None:
    assert problems_of({"nvidia_container_repo_url": INJECTION_URL}) == [
        "nvidia_container_repo_url = 'https://x/ /\\ndeb [trusted=yes] http://X/ /\\n#' contains "
        "whitespace or a control character; a URL is one word, with spaces written as %20"
    ]


def test_a_url_with_a_space_is_refused_without_its_credentials() -> None:
    (problem,) = problems_of(
        {"nvidia_cuda_repo_url": "https://user:s3cret@mirror.example.com/a b/"}
    )
    assert problem == (
        "nvidia_cuda_repo_url = 'https://***@mirror.example.com/a b/' contains whitespace or a "
        "control character; a URL is one word, with spaces written as %20"
    )


def test_a_url_of_the_wrong_type_is_shown_without_its_credentials() -> None:
    (problem,) = problems_of({"nvidia_cuda_repo_url": [CREDENTIALS_URL]})
    assert problem == (
        "nvidia_cuda_repo_url = ['https://***@mirror.example.com/cuda/'] must be a string, "
        "e.g. 'https://mirror.example.com/cuda/ubuntu2004/x86_64/'"
    )


def test_an_unparsable_url_with_credentials_is_refused_without_them() -> None:
    (problem,) = problems_of({"nvidia_cuda_repo_url": "https://user:s3cret@[::1/cuda/"})
    assert "s3cret" not in problem
    assert problem.startswith("nvidia_cuda_repo_url = '***' is not a well-formed URL")


def test_a_daemon_config_shown_whole_hides_proxy_credentials() -> None:
    (problem,) = problems_of(
        {"docker_daemon_config": [("proxies", "http://user:s3cret@proxy.example.com:3128")]}
    )
    assert problem == (
        "docker_daemon_config = [('proxies', 'http://***@proxy.example.com:3128')] must be a "
        "mapping of daemon.json keys to values, e.g. {'default-shm-size': '1G'}"
    )


def test_repository_urls_with_credentials_and_apt_variables_pass() -> None:
    settings = read_settings(
        {
            "nvidia_cuda_repo_url": CREDENTIALS_URL,
            "nvidia_container_repo_url": "file:///srv/mirror/libnvidia-container/$(ARCH)/",
        }
    )
    assert settings.nvidia_cuda_repo_url == CREDENTIALS_URL


def test_none_stays_allowed_for_the_cuda_repository_and_its_key() -> None:
    settings = read_settings({"nvidia_cuda_repo_url": None, "nvidia_cuda_repo_key_url": None})
    assert (settings.nvidia_cuda_repo_url, settings.nvidia_cuda_repo_key_url) == (None, None)


@pytest.mark.parametrize(
    "location",
    ["keys/3bf863cc.pub", "/etc/gpufleet/key with space.pub", "file:///etc/gpufleet/cuda.pub"],
)
def test_a_key_location_may_be_a_controller_path_or_url(location: str) -> None:
    assert (
        read_settings({"nvidia_cuda_repo_key_url": location}).nvidia_cuda_repo_key_url == location
    )


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        (
            "keys/cuda\n.pub",
            "nvidia_cuda_repo_key_url = 'keys/cuda\\n.pub' contains a control character; use a "
            "URL or a controller path, e.g. 'keys/cuda.pub'",
        ),
        (
            "ftp://user:s3cret@mirror.example.com/cuda.pub",
            "nvidia_cuda_repo_key_url = 'ftp://***@mirror.example.com/cuda.pub' has scheme 'ftp'; "
            "use a http:// or https:// or file:// URL",
        ),
        (
            "https://mirror.example.com/cuda.pub\nhttps://x/",
            "nvidia_cuda_repo_key_url = 'https://mirror.example.com/cuda.pub\\nhttps://x/' "
            "contains whitespace or a control character; a URL is one word, with spaces "
            "written as %20",
        ),
    ],
)
def test_a_bad_key_location_is_refused(location: str, problem: str) -> None:
    assert problems_of({"nvidia_cuda_repo_key_url": location}) == [problem]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (
            "nvidia_driver_branch",
            "470;touch /tmp/x",
            "nvidia_driver_branch = '470;touch /tmp/x' is not a driver branch; use e.g. '580'",
        ),
        (
            "nvidia_driver_version",
            "470.182.03-1ubuntu1",
            "nvidia_driver_version = '470.182.03-1ubuntu1' is not a driver version; use the full "
            "upstream version, e.g. '580.126.16'",
        ),
        (
            "cuda_version",
            "11-2",
            "cuda_version = '11-2' is not a CUDA release; use major.minor, e.g. '11.2'",
        ),
        (
            "cuda_package_version",
            "11.2",
            "cuda_package_version = '11.2' is not a full CUDA toolkit release; use e.g. '11.2.2'",
        ),
        (
            "cudnn_version",
            "8.1.1",
            "cudnn_version = '8.1.1' is not a full cuDNN package version; use e.g. '8.1.1.33'",
        ),
        (
            "nvidia_container_toolkit_version",
            "1.17.4 nvidia-container-toolkit-base",
            "nvidia_container_toolkit_version = '1.17.4 nvidia-container-toolkit-base' is not a "
            "1.x toolkit release; use e.g. '1.17.8'",
        ),
        (
            "docker_package",
            "docker-ce=5:24.0.7",
            "docker_package = 'docker-ce=5:24.0.7' is not a Debian package name; use e.g. "
            "'docker-ce'",
        ),
        (
            "tensorflow_image",
            "tensorflow/tensorflow:2.9.0-gpu$(id)",
            "tensorflow_image = 'tensorflow/tensorflow:2.9.0-gpu$(id)' is not a docker image "
            "reference; use e.g. 'tensorflow/tensorflow:2.9.0-gpu'",
        ),
        (
            "tensorflow_image",
            "TensorFlow/tensorflow:2.9.0-gpu --privileged",
            "tensorflow_image = 'TensorFlow/tensorflow:2.9.0-gpu --privileged' is not a docker "
            "image reference; use e.g. 'tensorflow/tensorflow:2.9.0-gpu'",
        ),
        (
            "gpu_results_dir",
            "results\r",
            "gpu_results_dir = 'results\\r' contains a control character; use a plain folder "
            "path, e.g. 'results'",
        ),
    ],
)
def test_values_that_become_names_and_paths_are_format_checked(
    key: str, value: str, problem: str
) -> None:
    assert problems_of({key: value}) == [problem]


def test_well_formed_values_of_other_releases_pass() -> None:
    settings = read_settings(
        {
            "nvidia_driver_branch": 535,
            "nvidia_driver_version": "535.183.01",
            "cuda_version": 12.2,
            "cuda_package_version": "12.2.2",
            "cudnn_version": "8.9.7.29",
            "nvidia_container_toolkit_version": "1.18.0~rc.2",
            "docker_package": "docker-ce",
            "tensorflow_image": "mirror.example.com:5000/ml/tf_gpu:2.12.0-gpu@sha256:"
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "gpu_results_dir": "/var/lib/gpufleet/results dir",
        }
    )
    assert (settings.nvidia_driver_branch, settings.cuda_version) == ("535", "12.2")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"upgrade_batch_size": "2"},
            "upgrade_batch_size = '2' must be a whole number of hosts (at least 1), e.g. 2 "
            "(not the string '2')",
        ),
        (
            {"upgrade_batch_size": "0"},
            "upgrade_batch_size = '0' must be a whole number of hosts (at least 1), e.g. 2 "
            "(not the string '0')",
        ),
        (
            {"upgrade_batch_size": 1.5},
            "upgrade_batch_size = 1.5 must be a whole number of hosts (at least 1), e.g. 2",
        ),
        (
            {"gpu_apt_lock_timeout": "300"},
            "gpu_apt_lock_timeout = '300' must be a whole number of seconds (0 or more), e.g. 300 "
            "(not the string '300')",
        ),
        (
            {"gpu_apt_lock_timeout": -1},
            "gpu_apt_lock_timeout = -1 must be a whole number of seconds (0 or more), e.g. 600",
        ),
        (
            {"gpu_apt_lock_timeout": True},
            "gpu_apt_lock_timeout = True must be a whole number of seconds (0 or more), e.g. 600",
        ),
        (
            {"gpu_expected_count": "8"},
            "gpu_expected_count = '8' must be a whole number of GPUs (at least 1), or None for at "
            "least one, e.g. 8 (not the string '8')",
        ),
        (
            {"docker_restart_with_running_containers": "yes"},
            "docker_restart_with_running_containers = 'yes' must be true or false",
        ),
    ],
)
def test_numbers_and_booleans_are_not_strings(data: dict[str, Any], problem: str) -> None:
    assert problems_of(data) == [problem]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            {"hosts": ["unix:///run/docker.sock", "tcp://127.0.0.1:2375"]},
            "docker_daemon_config['hosts'] = ['unix:///run/docker.sock', 'tcp://127.0.0.1:2375'] "
            "cannot be set: docker.service starts dockerd with -H fd://, and dockerd refuses to "
            'start with hosts in both ("the following directives are specified both as a flag '
            'and in the configuration file: hosts"); add -H flags to ExecStart in a '
            "docker.service drop-in instead",
        ),
        (
            {"insecure-registries": {"mirror.example.com:5000"}},
            "docker_daemon_config['insecure-registries'] = {'mirror.example.com:5000'} is not a "
            "JSON value (set); use a string, a number, true/false, None, a list or a mapping",
        ),
        (
            {"log-opts": {"max-size": b"10m"}},
            "docker_daemon_config['log-opts']['max-size'] = b'10m' is not a JSON value (bytes); "
            "use a string, a number, true/false, None, a list or a mapping",
        ),
        (
            {"default-ulimits": {"nofile": {"Soft": float("nan")}}},
            "docker_daemon_config['default-ulimits']['nofile']['Soft'] = nan is not a JSON "
            "number; use a finite number",
        ),
        (
            {"dns": ["192.0.2.1", float("inf")]},
            "docker_daemon_config['dns'][1] = inf is not a JSON number; use a finite number",
        ),
        (
            {"dns": ("192.0.2.1",)},
            "docker_daemon_config['dns'] = ('192.0.2.1',) is not a JSON value (tuple); use a "
            "string, a number, true/false, None, a list or a mapping",
        ),
        (
            {"log-opts": {5: "10m"}},
            "docker_daemon_config['log-opts'] has the key 5; daemon.json keys are strings, "
            "e.g. '5'",
        ),
    ],
)
def test_daemon_config_that_dockerd_or_json_cannot_take_is_refused(
    config: dict[Any, Any], problem: str
) -> None:
    assert problems_of({"docker_daemon_config": config}) == [problem]


def test_nested_json_daemon_config_passes() -> None:
    config = {
        "default-shm-size": "1G",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "default-ulimits": {"memlock": {"Name": "memlock", "Soft": -1, "Hard": -1}},
        "live-restore": True,
        "debug": None,
        "max-concurrent-downloads": 6.0,
    }
    assert read_settings({"docker_daemon_config": config}).docker_daemon_config == config


def test_misspelt_keys_are_refused_with_the_key_meant_all_at_once() -> None:
    assert problems_of(
        {
            "cuda_verison": "11.8",
            "nvidia_driver_verison": "520.61.05",
            "nvidai_driver_branch": "520",
            "upgrade_batch_size": "2",
        }
    ) == [
        "upgrade_batch_size = '2' must be a whole number of hosts (at least 1), e.g. 2 "
        "(not the string '2')",
        "cuda_verison is not a gpufleet data key; did you mean cuda_version?",
        "nvidai_driver_branch is not a gpufleet data key; did you mean nvidia_driver_branch?",
        "nvidia_driver_verison is not a gpufleet data key; did you mean nvidia_driver_version?",
    ]


def test_other_keys_with_a_gpufleet_prefix_are_warnings() -> None:
    settings = read_settings(
        {
            "docker_compose_projects": ["web"],
            "gpu_owner_team": "ml",
            "ssh_user": "ubuntu",
            "site": "x",
        }
    )
    assert settings.warnings == (
        "docker_compose_projects is not a gpufleet data key, nor close to one; gpufleet ignores it",
        "gpu_owner_team is not a gpufleet data key, nor close to one; gpufleet ignores it",
    )


def test_pyinfra_keys_are_never_reported() -> None:
    connector_keys = {
        key for connector in get_all_connectors().values() for key in connector.data_meta
    }
    # The dockerssh connector keeps its container's id in the host's data (a user may set it).
    pyinfra_keys = {
        *connector_keys,
        *(name for name, _ in all_global_arguments()),
        "docker_container_id",
    }
    assert read_settings(dict.fromkeys(pyinfra_keys, "x")).warnings == ()


def test_the_dockerssh_connectors_data_is_not_reported() -> None:
    inventory = Inventory((["@dockerssh/gpu-01:ubuntu:22.04"], {}))
    (host,) = inventory
    assert read_settings(host.data).warnings == ()


def test_pyinfra_data_keys_cover_the_connectors_prefixed_keys() -> None:
    # A pyinfra upgrade that adds a docker_* (or other prefixed) connector key fails here.
    connector_keys = {
        key for connector in get_all_connectors().values() for key in connector.data_meta
    }
    assert {key for key in connector_keys if key.startswith(GPUFLEET_KEY_PREFIXES)} <= (
        PYINFRA_DATA_KEYS
    )


def test_pyinfra_host_data_is_read_and_checked() -> None:
    inventory = Inventory(
        (
            ["gpu-01", ("@docker/ubuntu:22.04", {"docker_compose_projects": ["web"]})],
            {"ssh_user": "ubuntu", "_sudo": True, "cuda_version": "11.2"},
        ),
        typos=(["gpu-01"], {"cuda_verison": "11.8"}),
    )
    container = inventory.get_host("@docker/ubuntu:22.04")
    settings: GpuSettings = read_settings(container.data)
    assert settings.cuda_version == "11.2"
    assert settings.warnings == (
        "docker_compose_projects is not a gpufleet data key, nor close to one; gpufleet ignores it",
    )
    with pytest.raises(SettingsError, match="cuda_verison is not a gpufleet data key"):
        read_settings(inventory.get_host("gpu-01").data)


def test_the_readme_documents_every_key() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    # A row names one key or several: | `a`, `b` | default | meaning |
    documented = {
        key
        for row in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|", readme, re.MULTILINE)
        for key in re.findall(r"`(\w+)`", row)
    }
    assert set(GpuSettings.model_fields) - documented == set()
    assert documented - set(GpuSettings.model_fields) == set()
