"""
GPU-aware planning: the GPUs on the PCI bus decide the driver branches allowed, the kernel module
flavour, the fabric manager and the framework's coverage; Secure Boot needs signed modules.
Every expectation is written out as an operator would read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gpufleet.stack import compat
from gpufleet.stack.catalog import (
    DriverSource,
    KernelModules,
    driver_packages,
    runs_flavour,
    signed_module_packages,
)
from gpufleet.stack.gpus import Coverage
from gpufleet.stack.hardware import PciBus
from tests.unit.test_compat import DEFAULTS


def bus(*devices: tuple[str, str, str]) -> PciBus:
    """(address, class, device id) triples, as the PCI fact reports them."""
    return PciBus.from_devices(
        {"address": address, "class_code": class_code, "device_id": device_id}
        for address, class_code, device_id in devices
    )


# An HGX A100 board: eight A100 SXM4 80GB and six NVSwitches.
HGX_A100 = bus(
    *((f"0000:{slot}:00.0", "0302", "20b2") for slot in ("07", "0f", "47", "4e", "87", "90")),
    ("0000:b7:00.0", "0302", "20b2"),
    ("0000:bd:00.0", "0302", "20b2"),
    *((f"0000:{slot}:00.0", "0680", "1af1") for slot in ("c1", "c2", "c3", "c4", "c5", "c6")),
)
H100 = bus(("0000:18:00.0", "0302", "2330"), ("0000:2a:00.0", "0302", "2330"))
K80 = bus(("0000:05:00.0", "0302", "102d"))
T4 = bus(("0000:3b:00.0", "0302", "1eb8"))
B200 = bus(("0000:1b:00.0", "0302", "2901"))
V100_AND_B200 = bus(("0000:1b:00.0", "0302", "2901"), ("0000:3b:00.0", "0302", "1db4"))
UNKNOWN_GPU = bus(("0000:3b:00.0", "0302", "ffff"))


def plan(
    pci: PciBus,
    os: tuple[str, str] = ("ubuntu", "20.04"),
    secure_boot: bool | None = None,
    kernel_release: str = "",
    **wishes: Any,
) -> tuple[compat.StackPlan | None, list[str]]:
    request = dataclasses.replace(DEFAULTS, **wishes)
    return compat.plan_stack(request, compat.HostPlatform(*os, pci, secure_boot, kernel_release))


def test_the_pci_devices_become_gpus_and_nvswitches() -> None:
    assert len(HGX_A100.gpus) == 8 and len(HGX_A100.nvswitches) == 6
    assert HGX_A100.summary() == (
        "GPUs: 8x NVIDIA A100-SXM4-80GB (Ampere, compute 8.0) at 0000:07:00.0, 0000:0f:00.0, "
        "0000:47:00.0, 0000:4e:00.0, 0000:87:00.0, 0000:90:00.0, 0000:b7:00.0, 0000:bd:00.0; "
        "6 NVSwitches: fabric manager needed"
    )
    assert PciBus().summary() == (
        "no NVIDIA GPU seen on the PCI bus: the pinned stack is installed without GPU checks"
    )
    assert UNKNOWN_GPU.summary() == (
        "GPUs: 1x NVIDIA GPU 10de:ffff (not in gpufleet's table) at 0000:3b:00.0"
    )


def test_an_hgx_a100_gets_open_modules_and_the_fabric_manager_at_the_driver_version() -> None:
    stack, problems = plan(HGX_A100)
    assert problems == []
    assert stack is not None
    assert stack.driver.kernel_modules is KernelModules.OPEN
    assert stack.driver.fabric_manager
    packages = driver_packages(stack.driver)
    assert packages["nvidia-fabricmanager-535"] == "535.183.01-*"
    assert packages["nvidia-dkms-535-open"] == "535.183.01-*"
    assert stack.notes[1:] == (
        "driver 535.183.01 (R535, gpufleet's default), open kernel modules (data center GPUs, "
        "production-ready from R515)",
        "fabric manager: yes, for the NVSwitches",
        "Secure Boot: unknown",
    )


def test_an_a100_is_jit_only_for_tensorflow_2_9_a_warning_not_a_refusal() -> None:
    stack, problems = plan(HGX_A100)
    assert problems == [] and stack is not None
    assert [grade for _, grade in stack.coverage.grades] == [Coverage.JIT] * 8
    assert stack.warnings == (
        "tensorflow_image = 'tensorflow/tensorflow:2.9.0-gpu': TensorFlow 2.9 carries machine "
        "code for compute 3.5, 5.0, 6.0, 7.0, 7.5 and PTX for 8.0 only, so on the NVIDIA "
        "A100-SXM4-80GB (Ampere, compute 8.0) its kernels are JIT-compiled at the first start "
        "(TensorFlow warns it can take 30 minutes) and kept in the CUDA JIT cache: give "
        "containers a persistent cache big enough (CUDA_CACHE_MAXSIZE, CUDA_CACHE_PATH)",
    )


def test_a_t4_is_native_and_keeps_the_branch_default_modules_before_r515_rules() -> None:
    stack, problems = plan(T4)
    assert problems == [] and stack is not None
    assert [grade for _, grade in stack.coverage.grades] == [Coverage.NATIVE]
    assert stack.warnings == ()
    # A data center Turing GPU on R535: the open modules.
    assert stack.driver.kernel_modules is KernelModules.OPEN
    assert not stack.driver.fabric_manager


def test_an_h100_refuses_r470_and_tensorflow_2_9_naming_keys_gpus_and_what_works() -> None:
    stack, problems = plan(H100, nvidia_driver_branch="470")
    assert stack is None
    assert problems == [
        "nvidia_driver_branch = '470': R470 cannot drive the NVIDIA H100 80GB HBM3 (Hopper, "
        "compute 9.0) at 0000:18:00.0, 0000:2a:00.0 (driven by R520 to current branches); set "
        "nvidia_driver_branch to one that drives every GPU here: 535",
        "tensorflow_image = 'tensorflow/tensorflow:2.9.0-gpu': TensorFlow 2.9 with cuDNN 8.1 "
        "does not support the NVIDIA H100 80GB HBM3 (Hopper, compute 9.0) (cuDNN 8.1 stops at "
        "Ampere); TensorFlow releases gpufleet knows that support it: 2.12; or set "
        "gpu_allow_unsupported_framework: true to install the stack anyway",
    ]


def test_allowing_an_unsupported_framework_turns_the_refusal_into_a_warning() -> None:
    stack, problems = plan(H100, allow_unsupported_framework=True)
    assert problems == [] and stack is not None
    assert [grade for _, grade in stack.coverage.grades] == [Coverage.UNSUPPORTED] * 2
    assert stack.warnings == (
        "tensorflow_image = 'tensorflow/tensorflow:2.9.0-gpu': TensorFlow 2.9 with cuDNN 8.1 "
        "does not support the NVIDIA H100 80GB HBM3 (Hopper, compute 9.0) (cuDNN 8.1 stops at "
        "Ampere); installing anyway (gpu_allow_unsupported_framework)",
    )


def test_a_kepler_gpu_needs_r470_which_only_ubuntu_2004_carries() -> None:
    _, problems = plan(K80, os=("ubuntu", "22.04"), cuda_install_method="runfile")
    assert problems[0] == (
        "nvidia_driver_branch (default '580'): R580 cannot drive the Tesla K80 (Kepler, compute "
        "3.7) at 0000:05:00.0 (driven by R295 to R470); no branch gpufleet installs here drives "
        "every GPU on this host"
    )
    stack, problems = plan(K80, nvidia_driver_branch="470")
    assert problems == [] and stack is not None
    assert stack.driver.kernel_modules is KernelModules.PROPRIETARY


def test_blackwell_needs_the_open_modules_and_a_pin_to_proprietary_is_refused() -> None:
    stack, problems = plan(B200, os=("ubuntu", "24.04"), allow_unsupported_framework=True)
    assert stack is not None, problems
    assert stack.driver.kernel_modules is KernelModules.OPEN
    assert stack.notes[1].endswith(
        "open kernel modules (the NVIDIA B200 (Blackwell, compute 10.0) needs them)"
    )
    _, problems = plan(
        B200,
        os=("ubuntu", "24.04"),
        allow_unsupported_framework=True,
        nvidia_kernel_modules=KernelModules.PROPRIETARY,
    )
    assert problems == [
        "nvidia_kernel_modules = 'proprietary': the NVIDIA B200 (Blackwell, compute 10.0) needs "
        "the open kernel modules; set nvidia_kernel_modules to 'open' or leave it unset"
    ]


def test_no_module_flavour_drives_volta_and_blackwell_together() -> None:
    _, problems = plan(V100_AND_B200, os=("ubuntu", "24.04"), allow_unsupported_framework=True)
    assert problems == [
        "no kernel module flavour drives both the NVIDIA B200 (Blackwell, compute 10.0) (open "
        "modules only) and the Tesla V100-PCIE-16GB (Volta, compute 7.0) (proprietary modules "
        "only) on one host"
    ]


def test_a_host_without_gpus_or_with_an_unknown_one_is_planned_as_before() -> None:
    for pci in (PciBus(), UNKNOWN_GPU):
        stack, problems = plan(pci)
        assert problems == [] and stack is not None
        # R535's own default, without GPUs to decide from.
        assert stack.driver.kernel_modules is KernelModules.PROPRIETARY
        assert stack.warnings == ()


def test_secure_boot_needs_an_enrolled_key_for_dkms() -> None:
    _, problems = plan(HGX_A100, secure_boot=True)
    assert problems == [
        "Secure Boot is enabled on this host and the NVIDIA kernel modules are built by DKMS: "
        "unsigned, the kernel would refuse to load them. Set nvidia_module_signing_key and "
        "nvidia_module_signing_cert to the paths on the host of a Machine Owner Key you "
        "enrolled (mokutil --import), which DKMS signs the modules with; or, on Ubuntu, set "
        "nvidia_driver_source to 'ubuntu' for Canonical's signed precompiled modules"
    ]
    _, problems = plan(HGX_A100, os=("debian", "12"), secure_boot=True)
    assert problems[-1].endswith("which DKMS signs the modules with")
    stack, problems = plan(
        HGX_A100,
        secure_boot=True,
        module_signing_key="/root/mok/MOK.priv",
        module_signing_cert="/root/mok/MOK.der",
    )
    assert problems == [] and stack is not None
    assert stack.notes[-1] == "Secure Boot: enabled"
    _, problems = plan(HGX_A100, secure_boot=False, module_signing_cert="/root/mok/MOK.der")
    assert problems == [
        "nvidia_module_signing_cert is set but nvidia_module_signing_key is not: DKMS signs "
        "with the key and the certificate together; set both"
    ]


# What Ubuntu 20.04's apt offers of Canonical's R535-server build (apt-cache madison, focal).
FOCAL_OFFERS: dict[str, list[compat.AptOffer]] = {
    name: [
        {
            "version": "535.247.01-0ubuntu0.20.04.1",
            "source": "http://archive.example/ubuntu focal-updates/restricted amd64 Packages",
        }
    ]
    for name in ("nvidia-utils-535-server", "nvidia-headless-no-dkms-535-server-open")
}


def test_ubuntus_archive_gives_the_server_build_and_signed_modules_for_the_kernel_flavour() -> None:
    stack, problems = plan(
        HGX_A100,
        secure_boot=True,
        nvidia_driver_source=DriverSource.UBUNTU,
        nvidia_driver_version="535.247.01",
        kernel_release="5.4.0-216-generic",
    )
    assert problems == [] and stack is not None
    assert driver_packages(stack.driver) == {
        "libnvidia-cfg1-535-server": "535.247.01-*",
        "libnvidia-common-535-server": "535.247.01-*",
        "libnvidia-compute-535-server": "535.247.01-*",
        "libnvidia-decode-535-server": "535.247.01-*",
        "libnvidia-encode-535-server": "535.247.01-*",
        "libnvidia-extra-535-server": "535.247.01-*",
        "nvidia-compute-utils-535-server": "535.247.01-*",
        "nvidia-fabricmanager-535": "535.247.01-*",
        "nvidia-headless-no-dkms-535-server-open": "535.247.01-*",
        "nvidia-kernel-common-535-server": "535.247.01-*",
        "nvidia-kernel-source-535-server-open": "535.247.01-*",
        "nvidia-utils-535-server": "535.247.01-*",
    }
    # The kernel's version, not the driver's; following each new kernel, so not held.
    assert signed_module_packages(stack.driver) == {
        "linux-modules-nvidia-535-server-open-generic": None
    }
    assert stack.notes[1] == (
        "driver 535.247.01 (R535-server from Ubuntu's archive, nvidia_driver_version), open "
        "kernel modules (data center GPUs, production-ready from R515), signed for the generic "
        "kernels"
    )


def test_ubuntus_archive_needs_an_exact_version_an_ubuntu_host_and_a_kernel_flavour() -> None:
    request = dataclasses.replace(
        DEFAULTS, nvidia_driver_source=DriverSource.UBUNTU, nvidia_driver_branch="535"
    )
    platform = compat.HostPlatform("ubuntu", "20.04", T4, kernel_release="6.1.0-28")
    _, problems = compat.plan_stack(request, platform, FOCAL_OFFERS)
    assert problems == [
        "nvidia_driver_source = 'ubuntu' needs nvidia_driver_version, the exact release of "
        "R535-server to pin (Ubuntu's archive keeps only its newest): the host's apt offers "
        "535.247.01",
        "nvidia_kernel_flavour is not set and the running kernel '6.1.0-28' names no flavour; "
        "set it to the flavour of the Ubuntu kernels the host boots, e.g. 'generic'",
    ]
    _, problems = compat.plan_stack(request, compat.HostPlatform("debian", "12", T4))
    assert problems == [
        "nvidia_driver_source = 'ubuntu': Ubuntu's archive serves Ubuntu hosts; this host runs "
        "debian 12: set nvidia_driver_source to 'nvidia'"
    ]


def test_a_version_the_os_archive_does_not_offer_is_refused_with_what_it_offers() -> None:
    pins: dict[str, dict[str, str | None]] = {
        "nvidia_driver_version = '535.230.02'": {"nvidia-utils-535-server": "535.230.02-*"}
    }
    assert compat.offer_problems(pins, FOCAL_OFFERS, {}, None) == [
        "nvidia_driver_version = '535.230.02': the host's apt, from the OS archive, offers no "
        "nvidia-utils-535-server 535.230.02-* (offered: 535.247.01-0ubuntu0.20.04.1); pin a "
        "version it offers, or fix the mirror"
    ]
    # Nothing offered at all: the archive's lists may be missing, and apt will answer.
    flavour: dict[str, dict[str, str | None]] = {
        "nvidia_kernel_flavour = 'amd64'": {"linux-modules-nvidia-535-server-amd64": None}
    }
    assert compat.offer_problems(flavour, FOCAL_OFFERS, {}, None) == []


def test_a_kernel_runs_its_flavour_hardware_enablement_ones_included() -> None:
    assert runs_flavour("5.4.0-216-generic", "generic")
    assert runs_flavour("6.5.0-45-generic", "generic-hwe-22.04")
    assert runs_flavour("6.8.0-1015-aws", "aws")
    assert not runs_flavour("6.1.0-28-amd64", "generic")
    assert not runs_flavour("5.15.0-126-lowlatency", "generic")
