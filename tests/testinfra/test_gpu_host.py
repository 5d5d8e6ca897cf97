"""
The specification of a correct gpufleet GPU host, checked on the host itself.

Each test is one property a user relies on; run it against any host with pytest-testinfra. What
a correct host holds is written out in correct_host.py; conftest.py adds the inventory data.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from typing import Any

from tests.testinfra import correct_host
from tests.testinfra.correct_host import HostData


def includes(config: Any, wanted: Any) -> bool:
    """Whether ``config`` has every key of ``wanted`` with its value (objects: recursively)."""
    if isinstance(wanted, dict):
        return isinstance(config, dict) and all(
            key in config and includes(config[key], value) for key, value in wanted.items()
        )
    return config == wanted


def test_every_pinned_package_is_installed_at_its_pinned_version(host) -> None:
    wrong = {}
    for name, pattern in correct_host.PINNED_PACKAGES.items():
        package = host.package(name)
        if not package.is_installed or not fnmatchcase(package.version, pattern):
            wrong[name] = package.version if package.is_installed else "not installed"
    assert wrong == {}


def test_every_pinned_package_is_held(host) -> None:
    held = set(host.check_output("apt-mark showhold").split())
    assert set(correct_host.PINNED_PACKAGES) - held == set()


def test_a_headless_host_has_no_x_server_or_graphics_libraries(host) -> None:
    installed = [name for name in correct_host.GRAPHICS_PACKAGES if host.package(name).is_installed]
    assert installed == []


def test_repositories_use_their_own_keyrings_and_signed_by(host, expected: HostData) -> None:
    urls = {"cuda": expected.cuda_repo_url, "nvidia-container-toolkit": expected.container_repo_url}
    for repository, (keyring_path, sources_path) in correct_host.REPOSITORIES.items():
        keyring = host.file(keyring_path)
        assert keyring.is_file and keyring.mode == 0o644 and keyring.user == "root"
        assert host.file(sources_path).content_string == correct_host.source_line(
            repository, urls[repository]
        )


def test_no_source_is_trusted_without_a_signature(host) -> None:
    unsigned = host.run("grep -rl 'trusted=yes' /etc/apt/sources.list /etc/apt/sources.list.d")
    assert unsigned.stdout == ""
    assert not host.file("/etc/apt/trusted.gpg").exists


def test_managed_files_hold_exactly_their_contents(host) -> None:
    contents = {path: host.run("cat %s", path).stdout for path in correct_host.MANAGED_FILES}
    assert contents == correct_host.MANAGED_FILES


def test_links_point_at_their_targets(host) -> None:
    targets = {path: host.run("readlink %s", path).stdout.strip() for path in correct_host.LINKS}
    assert targets == correct_host.LINKS


def test_cuda_link_leads_to_the_pinned_toolkit(host) -> None:
    assert host.file(correct_host.CUDA_DEFAULT_LINK).linked_to == correct_host.CUDA_TOOLKIT_PATH


def test_nvidia_smi_reports_the_pinned_driver(host) -> None:
    version = host.check_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert set(version.splitlines()) == {correct_host.NVIDIA_DRIVER_VERSION}


def test_persistence_daemon_runs_with_persistence_mode_on(host) -> None:
    assert host.service("nvidia-persistenced").is_running
    modes = host.check_output("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader")
    assert set(modes.splitlines()) == {"Enabled"}


def test_login_shells_find_nvcc_of_the_pinned_release(host) -> None:
    banner = host.check_output("bash -lc 'nvcc --version'")
    assert f"Cuda compilation tools, release {correct_host.CUDA_VERSION}," in banner


def test_loader_resolves_cuda_runtime_and_cudnn(host) -> None:
    cache = host.check_output("ldconfig -p")
    for library in ("libcudart.so.11.0", "libcudnn.so.8"):
        assert f"\t{library} (" in cache, library


def test_cudnn_header_reports_the_pinned_release(host) -> None:
    header = host.file("/usr/include/cudnn_version.h").content_string
    for define in ("#define CUDNN_MAJOR 8", "#define CUDNN_MINOR 1", "#define CUDNN_PATCHLEVEL 1"):
        assert define in header.splitlines(), define


def test_daemon_json_registers_the_nvidia_runtime(host, expected: HostData) -> None:
    config = json.loads(host.file(correct_host.DAEMON_JSON_PATH).content_string)
    # A user's own nvidia runtime is kept as they wrote it (an absolute path, say).
    runtime_path = config["runtimes"]["nvidia"]["path"]
    assert runtime_path.rpartition("/")[2] == correct_host.NVIDIA_RUNTIME["path"]
    assert config.get("default-runtime") == expected.default_runtime
    assert includes(config, expected.daemon_config)


def test_docker_runs_with_nvidia_as_a_runtime(host, expected: HostData) -> None:
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"]
    assert info["DefaultRuntime"] == expected.default_runtime


def test_a_container_really_runs_with_the_nvidia_runtime(host, container_image: str) -> None:
    result = host.run(f"docker run --rm --runtime nvidia {container_image} echo gpufleet-ok")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "gpufleet-ok"
