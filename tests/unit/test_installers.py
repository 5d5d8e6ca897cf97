"""NVIDIA's forms of CUDA and cuDNN outside apt: names, method choice, refusals, installed state."""

from __future__ import annotations

from gpufleet.stack import installers
from gpufleet.stack.installers import (
    AptCarries,
    CudaInstallMethod,
    CudnnInstallMethod,
    InstalledForms,
    InstallMethods,
)

AUTO = (CudaInstallMethod.AUTO, CudnnInstallMethod.AUTO)
RUNFILE_AND_ARCHIVE = InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.ARCHIVE)
APT = InstallMethods(CudaInstallMethod.APT, CudnnInstallMethod.APT)
NOTHING_INSTALLED = InstalledForms(False, False, False, False)
NO_KEYS: dict[str, str | None] = {
    "cuda_runfile_url": None,
    "cuda_runfile_sha256": None,
    "cudnn_archive_url": None,
    "cudnn_archive_sha256": None,
    "tensorflow_image_archive_url": None,
    "tensorflow_image_archive_sha256": None,
}


def test_runfile_names_and_nvidias_url() -> None:
    assert installers.runfile_name("11.2.2") == "cuda_11.2.2_460.32.03_linux.run"
    assert installers.runfile_name("11.2.0") == "cuda_11.2.0_460.27.04_linux.run"
    assert installers.runfile_url("11.2.2") == (
        "https://developer.download.nvidia.com/compute/cuda/11.2.2/local_installers/"
        "cuda_11.2.2_460.32.03_linux.run"
    )
    assert installers.runfile_url("11.2.9") is None
    assert installers.cudnn_archive_name("8.1.1.33", "11.2") == (
        "cudnn-11.2-linux-x64-v8.1.1.33.tgz"
    )


def test_auto_is_apt_where_offered_else_nvidias_files() -> None:
    assert installers.resolve_methods(*AUTO, AptCarries(cuda=True, cudnn=True)) == APT
    assert (
        installers.resolve_methods(*AUTO, AptCarries(cuda=False, cudnn=False))
        == RUNFILE_AND_ARCHIVE
    )
    # An explicit method stands, whatever apt offers.
    assert installers.resolve_methods(
        CudaInstallMethod.RUNFILE, CudnnInstallMethod.AUTO, AptCarries(cuda=True, cudnn=True)
    ) == InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.APT)


def test_the_runfile_needs_a_pinned_digest_and_the_archive_a_url_too() -> None:
    assert installers.missing_artifact_keys(RUNFILE_AND_ARCHIVE, "11.2.2", NO_KEYS) == [
        "CUDA 11.2.2 comes from NVIDIA's runfile here: set cuda_runfile_sha256 (an artifact is "
        "fetched and used only with its pinned sha256)",
        "cuDNN comes from NVIDIA's tar archive here: set cudnn_archive_url and "
        "cudnn_archive_sha256 (an artifact is fetched and used only with its pinned sha256)",
    ]
    # A release without a known runfile has no default URL.
    assert installers.missing_artifact_keys(
        InstallMethods(CudaInstallMethod.RUNFILE, CudnnInstallMethod.APT),
        "11.2.9",
        {**NO_KEYS, "cuda_runfile_sha256": "a" * 64},
    ) == [
        "CUDA 11.2.9 comes from NVIDIA's runfile here: set cuda_runfile_url (an artifact is "
        "fetched and used only with its pinned sha256)"
    ]
    assert installers.missing_artifact_keys(APT, "11.2.2", NO_KEYS) == []


def test_an_image_archive_needs_its_digest() -> None:
    given = {**NO_KEYS, "tensorflow_image_archive_url": "file:///srv/tf.tar"}
    assert installers.missing_artifact_keys(APT, "11.2.2", given) == [
        "tensorflow_image comes from an archive: set tensorflow_image_archive_sha256 (an "
        "artifact is fetched and used only with its pinned sha256)"
    ]


def test_switching_forms_of_the_same_release_is_refused_with_the_way_out() -> None:
    assert installers.switch_problems(
        RUNFILE_AND_ARCHIVE, InstalledForms(True, False, True, False), "11.2"
    ) == [
        "cuda_install_method = 'runfile': CUDA 11.2 is installed from apt (cuda-toolkit-11-2) in "
        "/usr/local/cuda-11.2; set cuda_install_method to 'apt', or remove it first (apt-get "
        "purge cuda-toolkit-11-2 and its cuda-* dependencies)",
        "cudnn_install_method = 'archive': cuDNN is installed from apt (libcudnn8); set "
        "cudnn_install_method to 'apt', or remove it first (apt-get purge libcudnn8 "
        "libcudnn8-dev)",
    ]
    assert installers.switch_problems(APT, InstalledForms(False, True, False, True), "11.2") == [
        "cuda_install_method = 'apt': CUDA 11.2 is installed in /usr/local/cuda-11.2 by NVIDIA's "
        "runfile; set cuda_install_method to 'runfile', or remove it first "
        "(/usr/local/cuda-11.2/bin/cuda-uninstaller)",
        "cudnn_install_method = 'apt': cuDNN is installed in /usr/local/cuda-11.2/lib64 from "
        "NVIDIA's archive; set cudnn_install_method to 'archive', or remove it first (rm "
        "/usr/local/cuda-11.2/include/cudnn*.h /usr/local/cuda-11.2/lib64/libcudnn*)",
    ]
    assert installers.switch_problems(APT, NOTHING_INSTALLED, "11.2") == []


def test_the_runfile_toolkit_counts_as_installed_only_with_its_runtime() -> None:
    cudart = {"libcudart.so.11.0": "libcudart.so.11.2.152", "libcudart.so.11.2.152": None}
    assert installers.runfile_toolkit_installed("11.2.2", "11.2", cudart, "11.2.2")
    # version.json and nvcc come first: an interrupted install has them without the runtime.
    assert not installers.runfile_toolkit_installed("11.2.2", "11.2", {}, "11.2.2")
    assert not installers.runfile_toolkit_installed("11.2.1", "11.2", cudart, "11.2.2")
    assert not installers.runfile_toolkit_installed("11.2.2", None, cudart, "11.2.2")


def test_the_archive_cudnn_counts_as_installed_with_its_whole_chain() -> None:
    assert installers.cudnn_library_links("8.1.1.33")["libcudnn.so"] == "libcudnn.so.8"
    assert installers.cudnn_library_links("8.1.1.33")["libcudnn_cnn_infer.so.8"] == (
        "libcudnn_cnn_infer.so.8.1.1"
    )
    chain = {
        **installers.cudnn_library_links("8.1.1.33"),
        **dict.fromkeys(installers.cudnn_library_files("8.1.1.33")),
    }
    assert len(chain) == 21  # seven libraries, three names each
    assert installers.archive_cudnn_installed("8.1.1", chain, "8.1.1.33")
    assert not installers.archive_cudnn_installed("8.1.0", chain, "8.1.1.33")
    broken = {**chain, "libcudnn.so.8": "libcudnn.so.8.1.0"}
    assert not installers.archive_cudnn_installed("8.1.1", broken, "8.1.1.33")
