"""
The specification of a correct gpufleet GPU host, checked on the host itself.

Each test is one property a user relies on; run it against any host with pytest-testinfra.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

from gpufleet.deploys.cudnn import cudnn_packages
from gpufleet.deploys.nvidia_container import container_toolkit_packages
from gpufleet.deploys.nvidia_driver import driver_packages
from gpufleet.settings import GpuSettings
from gpufleet.stack import compat


def pinned_packages(expected: GpuSettings) -> dict[str, str]:
    patterns = {
        **driver_packages(expected.nvidia_driver_branch, expected.nvidia_driver_version),
        compat.cuda_package_name(expected.cuda_version): f"{expected.cuda_package_version}-*",
        **cudnn_packages(expected.cudnn_version, expected.cuda_version),
        **container_toolkit_packages(expected.nvidia_container_toolkit_version),
    }
    return {name: pattern for name, pattern in patterns.items() if pattern}


def test_every_pinned_package_is_installed_at_its_pinned_version(host, expected) -> None:
    wrong = {}
    for name, pattern in pinned_packages(expected).items():
        package = host.package(name)
        if not package.is_installed or not fnmatchcase(package.version, pattern):
            wrong[name] = package.version if package.is_installed else "not installed"
    assert wrong == {}


def test_every_pinned_package_is_held(host, expected) -> None:
    held = set(host.check_output("apt-mark showhold").split())
    assert set(pinned_packages(expected)) - held == set()


def test_repositories_use_their_own_keyrings_and_signed_by(host) -> None:
    for repository in ("cuda", "nvidia-container-toolkit"):
        keyring = host.file(f"/etc/apt/keyrings/{repository}.gpg")
        assert keyring.is_file and keyring.mode == 0o644 and keyring.user == "root"
        source = host.file(f"/etc/apt/sources.list.d/{repository}.list").content_string
        assert source.startswith(f"deb [signed-by=/etc/apt/keyrings/{repository}.gpg] ")


def test_no_source_is_trusted_without_a_signature(host) -> None:
    unsigned = host.run("grep -rl 'trusted=yes' /etc/apt/sources.list /etc/apt/sources.list.d")
    assert unsigned.stdout == ""
    assert not host.file("/etc/apt/trusted.gpg").exists


def test_nouveau_is_blacklisted(host) -> None:
    blacklist = host.file("/etc/modprobe.d/blacklist-nouveau.conf").content_string
    assert "blacklist nouveau" in blacklist.splitlines()


def test_nvidia_smi_reports_the_pinned_driver(host, expected) -> None:
    version = host.check_output("nvidia-smi --query-gpu=driver_version --format=csv,noheader")
    assert set(version.splitlines()) == {expected.nvidia_driver_version}


def test_persistence_daemon_runs_now_and_at_boot_with_persistence_mode_on(host) -> None:
    assert host.service("nvidia-persistenced").is_running
    boot_link = host.file("/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service")
    assert boot_link.is_symlink
    modes = host.check_output("nvidia-smi --query-gpu=persistence_mode --format=csv,noheader")
    assert set(modes.splitlines()) == {"Enabled"}


def test_cuda_link_points_at_the_pinned_toolkit(host, expected) -> None:
    assert host.file("/usr/local/cuda").linked_to == f"/usr/local/cuda-{expected.cuda_version}"


def test_login_shells_find_nvcc_of_the_pinned_release(host, expected) -> None:
    banner = host.check_output("bash -lc 'nvcc --version'")
    assert f"Cuda compilation tools, release {expected.cuda_version}," in banner


def test_loader_resolves_cuda_runtime_and_cudnn(host) -> None:
    cache = host.check_output("ldconfig -p")
    for library in ("libcudart.so.11.0", "libcudnn.so.8"):
        assert f"\t{library} (" in cache, library


def test_cudnn_header_reports_the_pinned_release(host, expected) -> None:
    header = host.file("/usr/include/cudnn_version.h").content_string
    major, minor, patch = expected.cudnn_version.split(".")[:3]
    for define, value in (("MAJOR", major), ("MINOR", minor), ("PATCHLEVEL", patch)):
        assert f"#define CUDNN_{define} {value}" in header


def test_daemon_json_registers_the_nvidia_runtime(host, expected) -> None:
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["runtimes"]["nvidia"]["path"].endswith("nvidia-container-runtime")
    assert config.get("default-runtime") == expected.docker_default_runtime
    for key, value in expected.docker_daemon_config.items():
        assert config[key] == value


def test_docker_runs_with_nvidia_as_a_runtime(host, expected) -> None:
    assert host.service("docker").is_running
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"]
    assert info["DefaultRuntime"] == expected.docker_default_runtime


def test_a_container_really_runs_with_the_nvidia_runtime(host, container_image) -> None:
    result = host.run(f"docker run --rm --runtime nvidia {container_image} echo gpufleet-ok")
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "gpufleet-ok"
