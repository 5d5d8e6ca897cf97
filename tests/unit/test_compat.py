"""The compatibility planner: good stacks pass, each bad one names its data key, value and a fix."""

from __future__ import annotations

import dataclasses

import pytest

from gpufleet.preflight import refusal_message
from gpufleet.stack import compat
from gpufleet.stack.catalog import DriverChoice, KernelModules
from gpufleet.stack.compat import AptOffer
from gpufleet.stack.installers import CudaInstallMethod, CudnnInstallMethod, InstallMethods
from gpufleet.stack.repositories import CUDA_REPOSITORIES, DriverNaming

# The default inventory data: the driver is the host's plan's choice.
DEFAULTS = compat.StackRequest(
    nvidia_driver_branch=None,
    nvidia_driver_version=None,
    nvidia_kernel_modules=None,
    nvidia_driver_headless=True,
    cuda_version="11.2",
    cuda_package_version="11.2.2",
    cudnn_version="8.1.1.33",
    nvidia_container_toolkit_version="1.17.8",
    tensorflow_image="tensorflow/tensorflow:2.9.0-gpu",
    nvidia_cuda_repo_url=None,
)
# A stack every supported OS's repository but Ubuntu 24.04's, Debian 12's and 13's carries.
CUDA_12_2 = dataclasses.replace(
    DEFAULTS,
    cuda_version="12.2",
    cuda_package_version="12.2.2",
    cudnn_version="8.9.7.29",
    tensorflow_image="example/custom-training-image:latest",
)
UBUNTU_2004 = compat.HostPlatform("ubuntu", "20.04")
UBUNTU_2204 = compat.HostPlatform("ubuntu", "22.04")
DEBIAN_12 = compat.HostPlatform("debian", "12")
FROM_APT = InstallMethods(CudaInstallMethod.APT, CudnnInstallMethod.APT)
FROM_NVIDIAS_FILES = InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.ARCHIVE)
REPOS = "https://developer.download.nvidia.com/compute/cuda/repos"
PROPRIETARY, OPEN = KernelModules.PROPRIETARY, KernelModules.OPEN


def problems(request: compat.StackRequest, platform: compat.HostPlatform) -> list[str]:
    plan, found = compat.plan_stack(request, platform)
    assert (plan is None) == bool(found)
    return found


def driver_of(request: compat.StackRequest, platform: compat.HostPlatform) -> DriverChoice:
    plan, found = compat.plan_stack(request, platform)
    assert plan is not None, found
    return plan.driver


def test_default_stack_on_ubuntu_2004_gets_r535_headless() -> None:
    # NVIDIA's ubuntu2004 repository has no R580; R535 is the newest branch gpufleet pins in it.
    plan, found = compat.plan_stack(DEFAULTS, UBUNTU_2004)
    assert found == []
    assert plan == compat.StackPlan(
        CUDA_REPOSITORIES["ubuntu2004"],
        f"{REPOS}/ubuntu2004/x86_64/",
        DriverChoice(DriverNaming.UBUNTU, "535", "535.183.01", PROPRIETARY, True),
        FROM_APT,
        notes=(
            "no NVIDIA GPU seen on the PCI bus: the pinned stack is installed without GPU checks",
            "driver 535.183.01 (R535, gpufleet's default), proprietary kernel modules (R535's "
            "default)",
            "fabric manager: no (no NVSwitch)",
            "Secure Boot: unknown",
        ),
    )


def test_cuda_11_2_comes_from_nvidias_files_where_the_repository_lacks_it() -> None:
    for os_id, version_id in (
        ("ubuntu", "22.04"),
        ("ubuntu", "24.04"),
        ("debian", "11"),
        ("debian", "12"),
    ):
        plan, found = compat.plan_stack(DEFAULTS, compat.HostPlatform(os_id, version_id))
        assert found == []
        assert plan is not None and plan.methods == FROM_NVIDIAS_FILES


def test_apt_is_refused_where_the_repository_lacks_cuda_11_2() -> None:
    request = dataclasses.replace(
        DEFAULTS,
        cuda_install_method=CudaInstallMethod.APT,
        cudnn_install_method=CudnnInstallMethod.APT,
    )
    for os_id, version_id, directory, carried in (
        ("ubuntu", "22.04", "ubuntu2204", "11.7 to 13.2"),
        ("ubuntu", "24.04", "ubuntu2404", "12.5 to 13.2"),
        ("debian", "11", "debian11", "11.4 to 12.6"),
        ("debian", "12", "debian12", "12.3 to 13.2"),
    ):
        assert problems(request, compat.HostPlatform(os_id, version_id)) == [
            f"cuda_install_method = 'apt': NVIDIA's {directory} repository has no "
            f"cuda-toolkit-11-2 (it carries CUDA {carried}); CUDA 11.2 is published for "
            "ubuntu2004: set cuda_install_method to 'runfile' (NVIDIA's CUDA runfile), or set "
            "nvidia_cuda_repo_url to a mirror of one of those repositories",
            f"cudnn_install_method = 'apt': NVIDIA's {directory} repository has no libcudnn8 "
            "build for CUDA 11.2; set cudnn_install_method to 'archive' (NVIDIA's cuDNN tar "
            "archive)",
        ]


def test_auto_follows_what_the_hosts_apt_offers() -> None:
    # Once apt has the repository's lists, its answer decides, not gpufleet's catalog.
    source = f"{REPOS}/ubuntu2004/x86_64  Packages"
    offers: dict[str, list[AptOffer]] = {
        "cuda-toolkit-11-2": [{"version": "11.2.1-1", "source": source}],
        "libcudnn8": [{"version": "8.1.1.33-1+cuda11.2", "source": source}],
        "libcudnn8-dev": [{"version": "8.1.1.33-1+cuda11.2", "source": source}],
    }
    plan, found = compat.plan_stack(DEFAULTS, UBUNTU_2004, offers)
    assert found == []
    assert plan is not None
    assert plan.methods == InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.APT)
    # An installed toolkit counts as offered.
    plan, _ = compat.plan_stack(DEFAULTS, UBUNTU_2004, offers, {"cuda-toolkit-11-2": "11.2.2-1"})
    assert plan is not None and plan.methods == FROM_APT


def test_debian_13_has_neither_r580_nor_cuda_11_2() -> None:
    assert problems(DEFAULTS, compat.HostPlatform("debian", "13")) == [
        "nvidia_driver_branch (default '580'): NVIDIA's debian13 repository has no R580 driver "
        "packages; it carries 590, 595, 610: gpufleet pins a release of none of them: set "
        "nvidia_driver_branch and nvidia_driver_version to one of their releases",
    ]


@pytest.mark.parametrize(
    ("os_id", "version_id", "driver"),
    [
        (
            "ubuntu",
            "20.04",
            DriverChoice(DriverNaming.UBUNTU, "535", "535.183.01", PROPRIETARY, True),
        ),
        ("ubuntu", "22.04", DriverChoice(DriverNaming.UBUNTU, "580", "580.159.04", OPEN, True)),
        ("debian", "11", DriverChoice(DriverNaming.DEBIAN, "535", "535.183.01", PROPRIETARY, True)),
    ],
)
def test_the_default_driver_per_os_release_for_cuda_12_2(
    os_id: str, version_id: str, driver: DriverChoice
) -> None:
    # R580 where the repository carries it (open modules from R560), else R535 (proprietary).
    assert driver_of(CUDA_12_2, compat.HostPlatform(os_id, version_id)) == driver


def test_ubuntu_2404_and_debian_12_have_no_cuda_12_2() -> None:
    for os_id, version_id, directory in (
        ("ubuntu", "24.04", "ubuntu2404"),
        ("debian", "12", "debian12"),
    ):
        request = dataclasses.replace(CUDA_12_2, cuda_install_method=CudaInstallMethod.APT)
        (problem,) = problems(request, compat.HostPlatform(os_id, version_id))
        assert problem.startswith(
            f"cuda_install_method = 'apt': NVIDIA's {directory} repository has no cuda-toolkit-12-2"
        )
        assert "CUDA 12.2 is published for ubuntu2004, ubuntu2204, debian11" in problem


def test_a_branch_the_repository_does_not_carry_is_refused() -> None:
    request = dataclasses.replace(CUDA_12_2, nvidia_driver_branch="470")
    assert problems(request, UBUNTU_2204) == [
        "nvidia_driver_branch = '470': NVIDIA's ubuntu2204 repository has no R470 driver "
        "packages; it carries 515, 520, 525, 530, 535, 545, 550, 555, 560, 565, 570, 575, 580, "
        "590, 595: set nvidia_driver_branch to one gpufleet pins a release of: 535, 580"
    ]


def test_r470_is_pinned_when_asked_for_and_proprietary() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="470", nvidia_driver_headless=False
    )
    assert driver_of(request, UBUNTU_2004) == DriverChoice(
        DriverNaming.UBUNTU, "470", "470.182.03", PROPRIETARY, False
    )


def test_open_modules_on_r470_are_refused() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="470", nvidia_kernel_modules=KernelModules.OPEN
    )
    assert problems(request, UBUNTU_2004) == [
        "nvidia_kernel_modules = 'open': R470 has no open kernel modules (they start with R515); "
        "set it to 'proprietary' or use a newer branch"
    ]


def test_the_module_flavour_asked_for_wins_over_the_branchs_default() -> None:
    request = dataclasses.replace(CUDA_12_2, nvidia_kernel_modules=KernelModules.PROPRIETARY)
    assert driver_of(request, UBUNTU_2204).kernel_modules is PROPRIETARY
    request = dataclasses.replace(DEFAULTS, nvidia_kernel_modules=KernelModules.OPEN)
    assert driver_of(request, UBUNTU_2004) == DriverChoice(
        DriverNaming.UBUNTU, "535", "535.183.01", OPEN, True
    )


def test_a_branch_gpufleet_pins_no_release_of_needs_the_version() -> None:
    request = dataclasses.replace(DEFAULTS, nvidia_driver_branch="560")
    assert problems(request, UBUNTU_2004) == [
        "nvidia_driver_version is not set and gpufleet pins no release of nvidia_driver_branch = "
        "'560'; set nvidia_driver_version to an exact 560 release, or use a branch gpufleet "
        "pins: 470, 535, 580"
    ]
    request = dataclasses.replace(request, nvidia_driver_version="560.35.03")
    assert driver_of(request, UBUNTU_2004) == DriverChoice(
        DriverNaming.UBUNTU, "560", "560.35.03", OPEN, True
    )


def test_the_version_alone_names_its_branch() -> None:
    request = dataclasses.replace(DEFAULTS, nvidia_driver_version="470.239.06")
    assert driver_of(request, UBUNTU_2004) == DriverChoice(
        DriverNaming.UBUNTU, "470", "470.239.06", PROPRIETARY, True
    )


def test_unsuffixed_ubuntu_branches_are_refused() -> None:
    request = dataclasses.replace(
        CUDA_12_2, nvidia_driver_branch="590", nvidia_driver_version="590.48.01"
    )
    assert problems(request, UBUNTU_2204) == [
        "nvidia_driver_branch = '590': from R590 NVIDIA's Ubuntu packages drop the branch from "
        "their names, which gpufleet does not install yet; use 580"
    ]


def test_the_debian_13_repository_is_signed_by_its_own_key() -> None:
    assert compat.repository_key_fingerprint(CUDA_REPOSITORIES["debian13"]) == (
        "02182E60104FCDC26EAE1B8597A5D4CB8793F200"
    )
    assert compat.repository_key_url(
        f"{REPOS}/debian13/x86_64/", CUDA_REPOSITORIES["debian13"]
    ) == (f"{REPOS}/debian13/x86_64/8793F200.pub")
    for directory in ("ubuntu2004", "ubuntu2204", "ubuntu2404", "debian11", "debian12"):
        assert compat.repository_key_fingerprint(CUDA_REPOSITORIES[directory]) == (
            "EB693B3035CD5710E231E123A4B469963BF863CC"
        )
    assert compat.repository_key_fingerprint(None) == "EB693B3035CD5710E231E123A4B469963BF863CC"


def test_debian_12_with_a_mirror_of_ubuntu2004_plans_with_that_repository() -> None:
    mirror = "https://mirror.example.com/nvidia/cuda/repos/ubuntu2004/x86_64/"
    request = dataclasses.replace(DEFAULTS, nvidia_cuda_repo_url=mirror)
    plan, found = compat.plan_stack(request, DEBIAN_12)
    assert found == []
    # The mirror's packages are named as the repository it mirrors names them.
    assert plan == compat.StackPlan(
        CUDA_REPOSITORIES["ubuntu2004"],
        mirror,
        DriverChoice(DriverNaming.UBUNTU, "535", "535.183.01", PROPRIETARY, True),
        FROM_APT,
        notes=plan.notes if plan else (),
    )


def test_a_mirror_of_no_known_repository_is_left_to_the_hosts_apt() -> None:
    mirror = "http://mirror.example/cuda/"
    plan, found = compat.plan_stack(
        dataclasses.replace(DEFAULTS, nvidia_cuda_repo_url=mirror), DEBIAN_12
    )
    assert found == []
    assert plan == compat.StackPlan(
        None,
        mirror,
        DriverChoice(DriverNaming.DEBIAN, "580", "580.159.04", OPEN, True),
        FROM_APT,
        notes=plan.notes if plan else (),
    )


def test_driver_460_32_on_the_usual_pairing_passes() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="460", nvidia_driver_version="460.32.03"
    )
    assert problems(request, UBUNTU_2004) == []


def test_driver_under_minor_version_compatibility_passes() -> None:
    # 450.80.02 runs any CUDA 11.x runtime (CUDA minor-version compatibility).
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="450", nvidia_driver_version="450.80.02"
    )
    assert problems(request, UBUNTU_2004) == []


def test_driver_450_51_with_cuda_11_2_is_refused() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="450", nvidia_driver_version="450.51"
    )
    (problem,) = problems(request, UBUNTU_2004)
    assert problem.startswith("nvidia_driver_version = '450.51' is too old for CUDA 11.2.2")
    assert ">= 460.32.03" in problem and ">= 450.80.02" in problem


def test_cudnn_8_1_with_cuda_12_2_is_refused() -> None:
    request = dataclasses.replace(CUDA_12_2, cudnn_version="8.1.1.33")
    (problem,) = problems(request, UBUNTU_2004)
    assert problem == (
        "cudnn_version = '8.1.1.33': cuDNN 8.1 was built for CUDA 10.2, 11.2, not "
        "cuda_version = '12.2'; for CUDA 12.2 use cuDNN 8.9"
    )


def test_unknown_cuda_release_is_refused_with_the_known_ones() -> None:
    request = dataclasses.replace(DEFAULTS, cuda_version="11.9")
    (problem,) = problems(request, UBUNTU_2004)
    assert problem.startswith("cuda_version = '11.9' is not a CUDA release gpufleet knows")
    assert "11.2" in problem and "11.8" in problem


def test_package_version_outside_the_cuda_release_is_refused() -> None:
    request = dataclasses.replace(DEFAULTS, cuda_package_version="11.4.0")
    (problem,) = problems(request, UBUNTU_2004)
    assert "cuda_package_version = '11.4.0'" in problem
    assert "11.2.0, 11.2.1, 11.2.2" in problem


def test_tensorflow_2_9_needs_cuda_11_2_and_cudnn_8_1() -> None:
    request = dataclasses.replace(DEFAULTS, cudnn_version="8.2.4.15", cuda_version="11.2")
    found = problems(request, UBUNTU_2004)
    assert any(p.startswith("cudnn_version = '8.2.4.15': cuDNN 8.2 was built for") for p in found)
    assert any("TensorFlow 2.9 needs cuDNN 8.1" in p for p in found)


def test_driver_version_off_its_branch_is_refused() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_branch="535", nvidia_driver_version="470.182.03"
    )
    (problem,) = problems(request, UBUNTU_2004)
    assert "is not on nvidia_driver_branch = '535'" in problem


def test_unsupported_os_is_refused() -> None:
    found = problems(DEFAULTS, compat.HostPlatform("centos", "7"))
    assert found[0].startswith("host OS centos 7 is not supported")
    assert problems(DEFAULTS, compat.HostPlatform("ubuntu", "18.04"))[0].startswith(
        "host OS ubuntu 18.04 is not supported (gpufleet supports ubuntu 20.04, ubuntu 22.04, "
        "ubuntu 24.04, debian 11, debian 12, debian 13)"
    )


UBUNTU2004_URL = f"{REPOS}/ubuntu2004/x86_64/"
Pins = dict[str, dict[str, str | None]]
PINS: Pins = {"nvidia_driver_version = '535.183.01'": {"nvidia-utils-535": "535.183.01-*"}}


def offers(*versions: str, source: str = f"{REPOS}/ubuntu2004/x86_64") -> list[AptOffer]:
    return [{"version": version, "source": source} for version in versions]


def test_offers_without_the_repositorys_lists_are_no_problem() -> None:
    # The first run adds the repository: until then apt cannot tell what it offers.
    assert compat.offer_problems(PINS, {}, {}, UBUNTU2004_URL) == []
    other = {
        "nvidia-utils-535": offers("535.54.03-0ubuntu1", source="http://mirror.example.com/ubuntu")
    }
    assert compat.offer_problems(PINS, other, {}, UBUNTU2004_URL) == []


def test_a_pinned_version_the_lists_lack_is_refused_with_the_offered_ones() -> None:
    offered = {"nvidia-utils-535": offers("535.161.08-0ubuntu1", "535.104.05-0ubuntu1")}
    assert compat.offer_problems(PINS, offered, {}, UBUNTU2004_URL) == [
        "nvidia_driver_version = '535.183.01': the host's apt, with the repository at "
        f"{REPOS}/ubuntu2004/x86_64/, offers no nvidia-utils-535 535.183.01-* (offered: "
        "535.161.08-0ubuntu1, 535.104.05-0ubuntu1); pin a version it offers, or fix the mirror"
    ]


def test_a_package_the_lists_lack_entirely_is_refused() -> None:
    pins: Pins = {
        "cudnn_version = '8.1.1.33'": {
            "libcudnn8": "8.1.1.33-*+cuda11.2",
            "libcudnn8-dev": "8.1.1.33-*+cuda11.2",
        }
    }
    offered = {"libcudnn8": offers("8.1.1.33-1+cuda11.2")}
    mirror = "https://user:s3cret@mirror.example.com/cuda/"
    offered_mirror = {
        "libcudnn8": offers("8.1.1.33-1+cuda11.2", source="https://mirror.example.com/cuda")
    }
    assert compat.offer_problems(pins, offered, {}, UBUNTU2004_URL) == [
        "cudnn_version = '8.1.1.33': the host's apt, with the repository at "
        f"{REPOS}/ubuntu2004/x86_64/, offers no libcudnn8-dev 8.1.1.33-*+cuda11.2 (offered: "
        "none); pin a version it offers, or fix the mirror"
    ]
    # A mirror's credentials stay out of the message.
    (problem,) = compat.offer_problems(pins, offered_mirror, {}, mirror)
    assert "with the repository at https://***@mirror.example.com/cuda/, offers no " in problem
    assert "s3cret" not in problem


def test_the_installed_version_counts_as_offered() -> None:
    offered = {"nvidia-utils-535": offers("535.161.08-0ubuntu1")}
    installed = {"nvidia-utils-535": "535.183.01-0ubuntu1"}
    assert compat.offer_problems(PINS, offered, installed, UBUNTU2004_URL) == []


def test_offers_of_the_container_repository_are_matched_before_apts_arch() -> None:
    pins: Pins = {
        "nvidia_container_toolkit_version = '1.17.8'": {"nvidia-container-toolkit": "1.17.8-*"}
    }
    url = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)/"
    source = "https://nvidia.github.io/libnvidia-container/stable/deb/amd64"
    offered = {"nvidia-container-toolkit": offers("1.17.4-1", source=source)}
    (problem,) = compat.offer_problems(pins, offered, {}, url)
    assert "offers no nvidia-container-toolkit 1.17.8-* (offered: 1.17.4-1)" in problem
    offered = {"nvidia-container-toolkit": offers("1.17.4-1", "1.17.8-1", source=source)}
    assert compat.offer_problems(pins, offered, {}, url) == []


def test_refusal_lists_every_problem_and_says_nothing_changed() -> None:
    assert refusal_message(["first problem", "second problem"]) == (
        "refusing to deploy, nothing was changed on the host:\n"
        "  - first problem\n  - second problem"
    )


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("tensorflow/tensorflow:2.9.0-gpu", "2.9"),
        ("tensorflow/tensorflow:2.9.1", "2.9"),
        ("registry.local:5000/tensorflow/tensorflow:2.10.0-gpu", "2.10"),
        ("tensorflow/tensorflow:latest-gpu", None),
    ],
)
def test_tensorflow_version_of_image(image: str, version: str | None) -> None:
    assert compat.tensorflow_version_of_image(image) == version


@pytest.mark.parametrize(
    ("python", "fits"), [("3.7.16", True), ("3.10.12", True), ("3.11.2", False), ("3.6.9", False)]
)
def test_python_range_for_tensorflow_2_9(python: str, fits: bool) -> None:
    assert compat.python_fits_tensorflow(python, "2.9") is fits


def test_cudnn_pin_that_nvidia_never_published_is_refused_while_planning() -> None:
    request = dataclasses.replace(DEFAULTS, cudnn_version="8.1.1.34")
    (problem,) = problems(request, UBUNTU_2004)
    assert problem == (
        "cudnn_version = '8.1.1.34' is not a cuDNN 8.1 release: NVIDIA published 8.1.0.77 and "
        "8.1.1.33; pin one of those"
    )


def test_both_cudnn_8_1_releases_are_accepted() -> None:
    for cudnn_version in ("8.1.0.77", "8.1.1.33"):
        request = dataclasses.replace(DEFAULTS, cudnn_version=cudnn_version)
        assert problems(request, UBUNTU_2004) == []
