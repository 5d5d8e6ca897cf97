"""
The whole GPU host deploy planned against @fake hosts: the exact commands for a bare host, none
for a converged one, and the refusals that come before any operation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.operations import run_ops

from gpufleet.deploys.gpu_host import gpu_host
from gpufleet.facts.gpu_host import SECTION_MARKER
from gpufleet.operations.packages import transaction
from tests.fakehost import (
    FAKE_RESULTS,
    FIXTURE_KEY_DATA,
    FakeHost,
    PlannedOperation,
    bare_ubuntu_2004,
    converged_ubuntu_2004,
    plan,
    planned_operations,
    prepare,
    sent_commands,
)
from tests.testinfra.correct_host import CONTAINER_TOOLKIT, MANAGED_FILES
from tests.unit.driver_packages import R580_FULL_OPEN

# The R535 headless family, proprietary kernel modules: Ubuntu 20.04's default driver (NVIDIA's
# ubuntu2004 repository has no R580), with the branch-less nvidia-modprobe pinned along.
R535_HEADLESS = (
    "libnvidia-cfg1-535",
    "libnvidia-common-535",
    "libnvidia-compute-535",
    "libnvidia-decode-535",
    "libnvidia-encode-535",
    "libnvidia-extra-535",
    "nvidia-compute-utils-535",
    "nvidia-dkms-535",
    "nvidia-headless-535",
    "nvidia-headless-no-dkms-535",
    "nvidia-kernel-common-535",
    "nvidia-kernel-source-535",
    "nvidia-modprobe",
    "nvidia-utils-535",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
APT_GET = (
    "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600"
    " -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o Acquire::Retries=0"
    " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
)


def plan_one(host: FakeHost, **data: object) -> list[PlannedOperation]:
    return plan({"gpu-01": (host, {**FIXTURE_KEY_DATA, **data})}, gpu_host)["gpu-01"]


def changes(operations: list[PlannedOperation]) -> dict[str, list[str]]:
    return {op.name.split(" | ")[-1]: op.commands for op in operations}


def install_command(*specs: str, hold: list[str]) -> str:
    steps = [
        f"{APT_GET} update",
        f"{APT_GET} install --no-install-recommends --allow-downgrades"
        f" --allow-change-held-packages {' '.join(specs)}",
    ]
    return transaction([*steps, f"apt-mark hold {' '.join(hold)}"] if hold else steps, 600)


def test_bare_ubuntu_2004_gets_every_component_pinned_and_held() -> None:
    planned = changes(plan_one(bare_ubuntu_2004()))
    assert list(planned) == [
        "NVIDIA CUDA repository (signed-by its own keyring)",
        "Kernel headers for the running kernel (5.4.0-150-generic)",
        "unattended-upgrades leaves the NVIDIA stack alone",
        "Blacklist nouveau",
        "Rebuild the initramfs without nouveau",
        "NVIDIA driver 535.183.01 (pinned, held)",
        "nvidia-persistenced in persistence mode",
        "nvidia-persistenced started at boot",
        "Reload systemd units",
        "nvidia-persistenced running",
        "CUDA toolkit 11.2.2 (pinned, held)",
        "CUDA on PATH and the loader path",
        "/usr/local/cuda -> CUDA 11.2",
        "Refresh the loader cache",
        "cuDNN 8.1.1.33 for CUDA 11.2 (pinned, held)",
        "NVIDIA container toolkit repository (signed-by its own keyring)",
        "nvidia-container-toolkit 1.17.8 (pinned, held)",
        "Docker (docker.io) installed",
        "nvidia runtime merged into /etc/docker/daemon.json",
        "Docker enabled and running",
        "docker runs with its daemon.json",
        "tensorflow/tensorflow:2.9.0-gpu available (docker pull)",
    ]
    # Pulled as a step of its own: the verification never pulls.
    assert planned["tensorflow/tensorflow:2.9.0-gpu available (docker pull)"] == [
        "timeout 1800 docker pull --quiet tensorflow/tensorflow:2.9.0-gpu"
    ]
    assert planned["NVIDIA driver 535.183.01 (pinned, held)"] == [
        install_command(
            *(f"'{name}=535.183.01-*'" for name in R535_HEADLESS), hold=list(R535_HEADLESS)
        )
    ]
    assert planned["CUDA toolkit 11.2.2 (pinned, held)"] == [
        install_command("'cuda-toolkit-11-2=11.2.2-*'", hold=["cuda-toolkit-11-2"])
    ]
    assert planned["cuDNN 8.1.1.33 for CUDA 11.2 (pinned, held)"] == [
        install_command(
            "'libcudnn8=8.1.1.33-*+cuda11.2'",
            "'libcudnn8-dev=8.1.1.33-*+cuda11.2'",
            hold=["libcudnn8", "libcudnn8-dev"],
        )
    ]
    assert planned["nvidia-container-toolkit 1.17.8 (pinned, held)"] == [
        install_command(
            *(f"'{name}=1.17.8-*'" for name in CONTAINER_TOOLKIT), hold=list(CONTAINER_TOOLKIT)
        )
    ]
    # Docker and the headers come from the OS archive, unpinned and not held.
    assert planned["Docker (docker.io) installed"] == [install_command("docker.io", hold=[])]


def test_bare_host_gets_the_unattended_upgrades_blacklist() -> None:
    operations = {op.name.split(" | ")[-1]: op for op in plan_one(bare_ubuntu_2004())}
    blacklist = operations["unattended-upgrades leaves the NVIDIA stack alone"]
    path = "/etc/apt/apt.conf.d/51gpufleet-unattended-upgrades"
    assert blacklist.uploads == {path: MANAGED_FILES[path].encode()}


def test_full_open_r580_on_ubuntu_2204_pins_its_family() -> None:
    ubuntu_2204 = FakeHost(
        os_release=(FIXTURES / "os-release" / "ubuntu-22.04.4.txt").read_text(),
        kernel_release="5.15.0-119-generic",
        services={"ssh.service": (True, True)},
        python3_version="3.10.12",
    )
    planned = changes(
        plan_one(
            ubuntu_2204,
            nvidia_driver_headless=False,
            cuda_version="11.8",
            cuda_package_version="11.8.0",
            cudnn_version="8.6.0.163",
            tensorflow_image="tensorflow/tensorflow:2.12.0-gpu",
        )
    )
    assert planned["NVIDIA driver 580.159.04 (pinned, held)"] == [
        install_command(*(f"'{name}=580.159.04-*'" for name in R580_FULL_OPEN), hold=R580_FULL_OPEN)
    ]


def test_bare_host_repositories_are_signed_by_their_own_keyrings() -> None:
    operations = {op.name.split(" | ")[-1]: op for op in plan_one(bare_ubuntu_2004())}
    cuda = operations["NVIDIA CUDA repository (signed-by its own keyring)"]
    assert cuda.uploads["/etc/apt/sources.list.d/cuda.list"] == (
        b"deb [signed-by=/etc/apt/keyrings/cuda.gpg] "
        b"https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/x86_64/ /\n"
    )
    container = operations["NVIDIA container toolkit repository (signed-by its own keyring)"]
    assert container.uploads["/etc/apt/sources.list.d/nvidia-container-toolkit.list"] == (
        b"deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.gpg] "
        b"https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)/ /\n"
    )
    assert cuda.uploads["/etc/apt/keyrings/cuda.gpg"][:1] == b"\x99"  # binary key packet


def test_converged_host_plans_no_change() -> None:
    # Handlers included: their triggers change nothing, so they do not run.
    assert plan_one(converged_ubuntu_2004()) == []


def test_bare_host_runs_each_handler_after_its_triggers() -> None:
    planned = changes(plan_one(bare_ubuntu_2004()))
    assert planned["Rebuild the initramfs without nouveau"] == [
        "if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"
    ]
    assert planned["Reload systemd units"] == ["systemctl daemon-reload"]
    assert planned["Refresh the loader cache"] == ["ldconfig"]


def test_one_handler_runs_for_its_one_changed_trigger() -> None:
    host = converged_ubuntu_2004()
    del host.files["/etc/ld.so.conf.d/cuda.conf"]
    assert list(changes(plan_one(host))) == [
        "CUDA on PATH and the loader path",
        "Refresh the loader cache",
    ]


def test_converged_host_costs_one_round_trip_planned_and_run() -> None:
    # gpu_verify off: verification reads the host by design, once, after the deploy's checks.
    state = prepare(
        {"gpu-01": (converged_ubuntu_2004(), {**FIXTURE_KEY_DATA, "gpu_verify": False})},
        gpu_host,
    )
    # Planning runs the state too (to evaluate the handlers).
    assert planned_operations(state)["gpu-01"] == []
    (sent,) = sent_commands(state)["gpu-01"]
    assert SECTION_MARKER in sent
    assert state.results[state.inventory.get_host("@fake/gpu-01")].success_ops > 0


def test_after_the_first_change_operations_check_the_host_live() -> None:
    state = prepare(
        {"gpu-01": (bare_ubuntu_2004(), {**FIXTURE_KEY_DATA, "gpu_verify": False})}, gpu_host
    )
    run_ops(state)
    snapshot_read, *sent = sent_commands(state)["gpu-01"]
    assert SECTION_MARKER in snapshot_read
    # The first operation (the CUDA repository) changes the host on the snapshot's word; every
    # check after it reads the host again.
    assert not any(
        "/etc/apt/keyrings/cuda.gpg" in command for command in sent if "sha256" in command
    )
    for live_check in (
        "-- linux-headers-5.4.0-150-generic 2>/dev/null; true",
        "sha256sum -- /etc/modprobe.d/blacklist-nouveau.conf",
        'readlink -- "$path"',
        "systemctl show --all --property Id --property SubState nvidia-persistenced.service",
        "/usr/local/cuda-*",
        "@@gpufleet:daemon-json-exists",
        "systemctl show --all --property Id --property UnitFileState docker.service",
    ):
        assert any(live_check in command for command in sent), live_check


def test_held_older_driver_is_moved_to_the_pin_and_held_again() -> None:
    host = converged_ubuntu_2004()
    for name in R535_HEADLESS:
        host.packages[name] = ("535.161.08-0ubuntu1", "hold ok installed")
    planned = changes(plan_one(host))
    assert list(planned) == ["NVIDIA driver 535.183.01 (pinned, held)"]
    (command,) = planned["NVIDIA driver 535.183.01 (pinned, held)"]
    assert command == install_command(
        *(f"'{name}=535.183.01-*'" for name in R535_HEADLESS), hold=list(R535_HEADLESS)
    )
    assert "unhold" not in command


def test_the_full_driver_going_headless_removes_its_graphics_part_first() -> None:
    host = converged_ubuntu_2004()
    graphics = [
        "cuda-drivers-535",
        "libnvidia-fbc1-535",
        "libnvidia-gl-535",
        "nvidia-driver-535",
        "xserver-xorg-video-nvidia-535",
    ]
    for name in graphics:
        host.packages[name] = ("535.183.01-0ubuntu1", "hold ok installed")
    planned = changes(plan_one(host))
    # The headless packages are installed and held at the pin already.
    assert list(planned) == ["Remove the driver packages R535 (proprietary modules) replaces"]
    (remove,) = planned["Remove the driver packages R535 (proprietary modules) replaces"]
    assert f"purge --allow-change-held-packages {' '.join(graphics)};" in remove


def test_a_pin_the_hosts_apt_does_not_offer_refuses_the_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An earlier run added NVIDIA's ubuntu2004 repository; its lists lack 535.183.01.
    host = bare_ubuntu_2004()
    repository = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/x86_64"
    host.madison = [
        f"nvidia-utils-535 | 535.161.08-0ubuntu1 | {repository}  Packages",
        f"nvidia-utils-535 | 535.104.05-0ubuntu1 | {repository}  Packages",
    ]
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        plan_one(host)
    assert "refusing to deploy, nothing was changed on the host" in caplog.text
    assert (
        "nvidia_driver_version = '535.183.01': the host's apt, with the repository at "
        "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/x86_64/, offers no "
    ) in caplog.text
    assert "nvidia-utils-535 535.183.01-* (offered: 535.161.08-0ubuntu1, 535.104.05-0ubuntu1)" in (
        caplog.text
    )


def test_unheld_pinned_package_is_held_again_without_reinstalling() -> None:
    host = converged_ubuntu_2004()
    host.packages["libcudnn8"] = ("8.1.1.33-1+cuda11.2", "install ok installed")
    assert changes(plan_one(host)) == {
        "cuDNN 8.1.1.33 for CUDA 11.2 (pinned, held)": ["apt-mark hold libcudnn8"]
    }


def test_users_daemon_json_keys_are_kept() -> None:
    host = converged_ubuntu_2004()
    user_config = {
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "registry-mirrors": ["https://mirror.example.invalid"],
        "runtimes": {"crun": {"path": "/usr/bin/crun"}},
    }
    host.files["/etc/docker/daemon.json"] = json.dumps(user_config).encode()
    operations = plan_one(host, docker_daemon_config={"default-shm-size": "1G"})
    (daemon,) = [op for op in operations if op.name.endswith("merged into /etc/docker/daemon.json")]
    assert daemon.commands == [
        "mkdir -p /var/lib/gpufleet",
        "upload /var/lib/gpufleet/daemon-json-keys.json",
        "mkdir -p /etc/docker",
        "upload /etc/docker/daemon.json.gpufleet-new",
        "if dockerd --help 2>&1 | grep -q -- --validate; then dockerd --validate --config-file "
        "/etc/docker/daemon.json.gpufleet-new || { rm -f /etc/docker/daemon.json.gpufleet-new; "
        "exit 1; }; fi",
        "cp -np /etc/docker/daemon.json /etc/docker/daemon.json.before-gpufleet && "
        "cp -p /etc/docker/daemon.json /etc/docker/daemon.json.gpufleet-previous",
        "mv -f /etc/docker/daemon.json.gpufleet-new /etc/docker/daemon.json",
    ]
    # The record of gpufleet's own keys: only these leave the file when the inventory drops them.
    assert json.loads(daemon.uploads["/var/lib/gpufleet/daemon-json-keys.json"]) == [
        ["default-shm-size"]
    ]
    assert json.loads(daemon.uploads["/etc/docker/daemon.json.gpufleet-new"]) == {
        **user_config,
        "runtimes": {
            "crun": {"path": "/usr/bin/crun"},
            "nvidia": {"path": "nvidia-container-runtime", "args": []},
        },
        "default-runtime": "nvidia",
        "default-shm-size": "1G",
    }


def test_daemon_json_that_does_not_parse_refuses_the_host(caplog: pytest.LogCaptureFixture) -> None:
    host = converged_ubuntu_2004()
    host.files["/etc/docker/daemon.json"] = b'{"log-driver": "json-file",}\n'
    # The one host is refused while planned, so pyinfra has none left.
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        plan_one(host)
    assert (
        "/etc/docker/daemon.json cannot be read as dockerd reads it (line 1 column 28"
        in caplog.text
    )
    assert "it was left untouched" in caplog.text


def run_cli_dry(*data: str, limit: str = "@fake/gpu-bare") -> subprocess.CompletedProcess[str]:
    pyinfra = Path(sys.executable).with_name("pyinfra")
    args = [
        str(pyinfra),
        "--dry",
        "tests/fixtures/inventories/fake_ubuntu2004.py",
        "deploys/gpu_host.py",
        "--limit",
        limit,
    ]
    # The run summary's JSON goes to gpu_results_dir: not the checkout.
    for item in (f"gpu_results_dir={FAKE_RESULTS.name}", *data):
        args += ["--data", item]
    return subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_dry_run_lists_pinned_installs() -> None:
    result = run_cli_dry()
    assert result.returncode == 0, result.stderr + result.stdout
    for line in (
        "NVIDIA driver 535.183.01 (pinned, held)",
        "CUDA toolkit 11.2.2 (pinned, held)",
        "cuDNN 8.1.1.33 for CUDA 11.2 (pinned, held)",
        "nvidia-container-toolkit 1.17.8 (pinned, held)",
        "nvidia runtime merged into /etc/docker/daemon.json",
    ):
        assert line in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("data", "limit", "message"),
    [
        (
            ["nvidia_driver_branch=450", "nvidia_driver_version=450.51"],
            "@fake/gpu-bare",
            "nvidia_driver_version = '450.51' is too old for CUDA 11.2.2",
        ),
        (
            [
                "cuda_version=12.2",
                "cuda_package_version=12.2.2",
                "nvidia_driver_branch=535",
                "nvidia_driver_version=535.183.01",
                "tensorflow_image=example/custom:latest",
            ],
            "@fake/gpu-bare",
            "cudnn_version = '8.1.1.33': cuDNN 8.1 was built for CUDA 10.2, 11.2",
        ),
        (
            ["cuda_version=11.9"],
            "@fake/gpu-bare",
            "cuda_version = '11.9' is not a CUDA release gpufleet knows",
        ),
        (
            [],
            "@fake/debian12-bare",
            "CUDA 11.2.2 comes from NVIDIA's runfile here: set cuda_runfile_sha256 (an artifact "
            "is fetched and used only with its pinned sha256)",
        ),
    ],
)
def test_cli_refuses_bad_combinations_before_any_operation(
    data: list[str], limit: str, message: str
) -> None:
    result = run_cli_dry(*data, limit=limit)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "refusing to deploy, nothing was changed on the host" in output
    assert message in output
    assert "Detected changes" not in output


def test_cli_dry_run_names_the_methods_and_the_artifacts_and_fetches_nothing(
    tmp_path: Path,
) -> None:
    runfile = tmp_path / "cuda_11.2.2_460.32.03_linux.run"
    runfile.write_bytes(b"r" * 3 * 1024)
    archive = tmp_path / "cudnn-11.2-linux-x64-v8.1.1.33.tgz"
    archive.write_bytes(b"a" * 2 * 1024 * 1024)
    cache = tmp_path / "cache"
    result = run_cli_dry(
        f"cuda_runfile_url={runfile}",
        f"cuda_runfile_sha256={'1' * 64}",
        f"cudnn_archive_url={archive}",
        f"cudnn_archive_sha256={'2' * 64}",
        f"gpu_artifact_cache={cache}",
        limit="@fake/debian12-bare",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (
        "CUDA 11.2.2 from runfile, cuDNN 8.1.1.33 from archive; artifacts: cuda_runfile "
        "(3.0 KiB) to fetch, to send; cudnn_archive (2.0 MiB) to fetch, to send"
    ) in output
    assert "CUDA toolkit 11.2.2 (NVIDIA's runfile, toolkit only)" in output
    assert "cuDNN 8.1.1.33 for CUDA 11.2 (NVIDIA's archive)" in output
    assert not cache.exists() or list(cache.rglob("*")) == []
