"""The GPU table: PCI ids to models, driver branches, open modules, TensorFlow coverage."""

from __future__ import annotations

import re

import pytest

from gpufleet.stack import compat, gpus
from gpufleet.stack.gpus import Architecture, Coverage, OpenModules


def model(device_id: str) -> gpus.GpuModel:
    found = gpus.gpu_model(device_id)
    assert found is not None, device_id
    return found


K80, P40, V100, T4 = model("102d"), model("1b38"), model("1db5"), model("1eb8")
A100, A10, L40S, H100 = model("20b2"), model("2236"), model("26b9"), model("2330")
GH200, B200 = model("2342"), model("2901")
TF_2_9 = gpus.TENSORFLOW_BUILDS["2.9"]


def test_a100_sxm4_80gb_by_device_id() -> None:
    assert gpus.gpu_model("20b2") == gpus.GpuModel(
        "NVIDIA A100-SXM4-80GB", Architecture.AMPERE, "8.0", datacenter=True
    )


@pytest.mark.parametrize("written", ["20b2", "20B2", "0x20b2", "0X20B2", " 20b2\n"])
def test_device_id_spellings(written: str) -> None:
    assert model(written).name == "NVIDIA A100-SXM4-80GB"


def test_h100_sxm5_is_hopper_9_0() -> None:
    h100 = model("0x2330")
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert h100.architecture is Architecture.HOPPER
    assert h100.compute_capability == "9.0"
    assert h100.datacenter


@pytest.mark.parametrize("unknown", ["ffff", "0000", "", "1af1", "not-an-id"])
def test_unknown_ids_are_none(unknown: str) -> None:
    # 1af1 is an NVSwitch, not a GPU.
    assert gpus.gpu_model(unknown) is None


@pytest.mark.parametrize(
    ("device_id", "name", "architecture", "capability"),
    [
        ("102d", "Tesla K80", Architecture.KEPLER, "3.7"),
        ("13f2", "Tesla M60", Architecture.MAXWELL, "5.2"),
        ("17fd", "Tesla M40", Architecture.MAXWELL, "5.2"),
        ("15f8", "Tesla P100-PCIE-16GB", Architecture.PASCAL, "6.0"),
        ("1b38", "Tesla P40", Architecture.PASCAL, "6.1"),
        ("1db4", "Tesla V100-PCIE-16GB", Architecture.VOLTA, "7.0"),
        ("1db5", "Tesla V100-SXM2-32GB", Architecture.VOLTA, "7.0"),
        ("1eb8", "Tesla T4", Architecture.TURING, "7.5"),
        ("20b0", "NVIDIA A100-SXM4-40GB", Architecture.AMPERE, "8.0"),
        ("20b5", "NVIDIA A100 80GB PCIe", Architecture.AMPERE, "8.0"),
        ("20f1", "NVIDIA A100-PCIE-40GB", Architecture.AMPERE, "8.0"),
        ("20b7", "NVIDIA A30", Architecture.AMPERE, "8.0"),
        ("2235", "NVIDIA A40", Architecture.AMPERE, "8.6"),
        ("2236", "NVIDIA A10", Architecture.AMPERE, "8.6"),
        ("27b8", "NVIDIA L4", Architecture.ADA, "8.9"),
        ("26b5", "NVIDIA L40", Architecture.ADA, "8.9"),
        ("26b9", "NVIDIA L40S", Architecture.ADA, "8.9"),
        ("2684", "NVIDIA GeForce RTX 4090", Architecture.ADA, "8.9"),
        ("2331", "NVIDIA H100 PCIe", Architecture.HOPPER, "9.0"),
        ("2321", "NVIDIA H100 NVL", Architecture.HOPPER, "9.0"),
        ("2335", "NVIDIA H200", Architecture.HOPPER, "9.0"),
        ("2342", "NVIDIA GH200 120GB", Architecture.HOPPER, "9.0"),
        ("2901", "NVIDIA B200", Architecture.BLACKWELL, "10.0"),
        ("2bb5", "NVIDIA RTX PRO 6000 Blackwell Server Edition", Architecture.BLACKWELL, "12.0"),
        (
            "2bb1",
            "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
            Architecture.BLACKWELL,
            "12.0",
        ),
    ],
)
def test_models(device_id: str, name: str, architecture: Architecture, capability: str) -> None:
    found = model(device_id)
    assert (found.name, found.architecture, found.compute_capability) == (
        name,
        architecture,
        capability,
    )


def test_datacenter_flags() -> None:
    assert model("2bb5").datacenter  # RTX PRO 6000 Blackwell Server Edition
    assert not model("2bb1").datacenter  # its Workstation Edition
    assert not model("2684").datacenter  # GeForce RTX 4090
    assert T4.datacenter and K80.datacenter


def test_architectures_are_ordered_by_age() -> None:
    assert Architecture.BLACKWELL.newer_than(Architecture.HOPPER)
    assert Architecture.HOPPER.newer_than(Architecture.ADA)
    assert not Architecture.AMPERE.newer_than(Architecture.AMPERE)
    assert not Architecture.KEPLER.newer_than(Architecture.MAXWELL)
    assert Architecture.KEPLER.age == 0
    assert Architecture.BLACKWELL.age == 8


def test_kepler_ends_with_r470() -> None:
    assert gpus.driven_by(K80, 470)
    assert not gpus.driven_by(K80, 535)
    assert not gpus.driven_by(K80, 580)


def test_volta_ends_with_r580() -> None:
    assert gpus.driven_by(V100, 470)
    assert gpus.driven_by(V100, 580)
    assert not gpus.driven_by(V100, 590)


def test_hopper_needs_a_newer_branch_than_r470() -> None:
    assert not gpus.driven_by(H100, 470)
    assert gpus.driven_by(H100, 535)
    assert gpus.driven_by(H100, 580)
    assert gpus.driven_by(H100, 610)


def test_blackwell_starts_with_r570() -> None:
    assert not gpus.driven_by(B200, 535)
    assert not gpus.driven_by(B200, 565)
    assert gpus.driven_by(B200, 570)
    assert gpus.driven_by(B200, 580)


def test_turing_and_newer_have_no_last_branch() -> None:
    assert gpus.driven_by(T4, 470)
    assert gpus.driven_by(T4, 999)


def test_open_modules() -> None:
    assert gpus.open_modules(B200) is OpenModules.REQUIRED
    assert gpus.open_modules(model("2bb1")) is OpenModules.REQUIRED
    assert gpus.open_modules(GH200) is OpenModules.REQUIRED
    assert gpus.open_modules(model("2348")) is OpenModules.REQUIRED  # GH200 144G HBM3e
    assert gpus.open_modules(H100) is OpenModules.SUPPORTED  # a discrete Hopper
    assert gpus.open_modules(T4) is OpenModules.SUPPORTED
    assert gpus.open_modules(A100) is OpenModules.SUPPORTED
    assert gpus.open_modules(V100) is OpenModules.UNSUPPORTED
    assert gpus.open_modules(P40) is OpenModules.UNSUPPORTED
    assert gpus.open_modules(K80) is OpenModules.UNSUPPORTED


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (T4, Coverage.NATIVE),  # sm_75
        (P40, Coverage.NATIVE),  # 6.1 runs sm_60
        (K80, Coverage.NATIVE),  # 3.7 runs sm_35
        (V100, Coverage.NATIVE),  # sm_70
        (A100, Coverage.JIT),  # compute_80 only
        (A10, Coverage.JIT),  # 8.6: compute_80 only
        (L40S, Coverage.UNSUPPORTED),  # Ada: newer than cuDNN 8.1
        (H100, Coverage.UNSUPPORTED),  # Hopper: newer than cuDNN 8.1
        (B200, Coverage.UNSUPPORTED),
    ],
)
def test_tensorflow_2_9_coverage(gpu: gpus.GpuModel, expected: Coverage) -> None:
    assert gpus.coverage(TF_2_9, gpu) is expected


def test_tensorflow_2_9_build() -> None:
    assert TF_2_9.framework == "TensorFlow 2.9"
    assert TF_2_9.machine_code == ("3.5", "5.0", "6.0", "7.0", "7.5")
    assert TF_2_9.ptx == ("8.0",)
    assert TF_2_9.cudnn == "8.1"
    assert TF_2_9.cudnn_newest_architecture is Architecture.AMPERE


def test_tensorflow_2_12_reaches_hopper_by_jit() -> None:
    tf_2_12 = gpus.TENSORFLOW_BUILDS["2.12"]
    assert gpus.coverage(tf_2_12, H100) is Coverage.JIT
    assert gpus.coverage(tf_2_12, L40S) is Coverage.JIT
    assert gpus.coverage(tf_2_12, B200) is Coverage.UNSUPPORTED


def test_capabilities_compare_as_numbers_not_strings() -> None:
    # As strings "10.0" < "8.0"; as numbers 10.0 is newer. A build with PTX for 8.0 and a
    # cuDNN that knew Blackwell would JIT on a 10.0 GPU.
    build = gpus.FrameworkBuild("test", (), ("8.0",), "9.0", Architecture.BLACKWELL)
    assert gpus.coverage(build, B200) is Coverage.JIT
    # SASS for 12.0 does not run on 10.0 (different major), nor SASS for 8.0 on 10.0.
    sass_only = gpus.FrameworkBuild("test", ("8.0", "12.0"), (), "9.0", Architecture.BLACKWELL)
    assert gpus.coverage(sass_only, B200) is Coverage.UNSUPPORTED
    assert gpus.coverage(sass_only, model("2bb5")) is Coverage.NATIVE


def test_older_than_the_oldest_build_is_unsupported() -> None:
    kepler_3_0 = gpus.GpuModel("a Kepler GK104", Architecture.KEPLER, "3.0", datacenter=False)
    assert gpus.coverage(TF_2_9, kepler_3_0) is Coverage.UNSUPPORTED


def test_pci_constants() -> None:
    assert gpus.PCI_VENDOR_NVIDIA == "10de"
    assert gpus.GPU_CLASSES == ("0300", "0302")
    assert gpus.NVSWITCH_CLASS == "0680"
    assert gpus.NVSWITCH_MODELS == {"1af1": "A100 NVSwitch", "22a3": "H100 NVSwitch"}


def test_table_consistency() -> None:
    hex_id = re.compile(r"[0-9a-f]{4}")
    capability = re.compile(r"\d{1,2}\.\d")
    assert set(gpus.ARCHITECTURES) == set(Architecture)
    for device_id, gpu in gpus.GPU_MODELS.items():
        assert hex_id.fullmatch(device_id), device_id
        assert gpu.architecture in gpus.ARCHITECTURES, device_id
        assert capability.fullmatch(gpu.compute_capability), device_id
        assert gpu.name, device_id
    for device_id in gpus.NVSWITCH_MODELS:
        assert hex_id.fullmatch(device_id), device_id
        assert device_id not in gpus.GPU_MODELS
    for support in gpus.ARCHITECTURES.values():
        assert support.newest_branch is None or support.oldest_branch <= support.newest_branch
        assert re.fullmatch(r"\d+\.\d+", support.first_cuda)


def test_capability_majors_match_architectures() -> None:
    majors = {
        Architecture.KEPLER: {3},
        Architecture.MAXWELL: {5},
        Architecture.PASCAL: {6},
        Architecture.VOLTA: {7},
        Architecture.TURING: {7},
        Architecture.AMPERE: {8},
        Architecture.ADA: {8},
        Architecture.HOPPER: {9},
        Architecture.BLACKWELL: {10, 12},
    }
    for device_id, gpu in gpus.GPU_MODELS.items():
        assert int(gpu.compute_capability.split(".")[0]) in majors[gpu.architecture], device_id


def test_tensorflow_builds_match_compat() -> None:
    assert list(gpus.TENSORFLOW_BUILDS) == list(compat.TENSORFLOW_STACKS)
    for version, build in gpus.TENSORFLOW_BUILDS.items():
        assert build.framework == f"TensorFlow {version}"
        assert build.cudnn == compat.TENSORFLOW_STACKS[version].cudnn
