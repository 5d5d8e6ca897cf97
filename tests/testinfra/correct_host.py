"""
A correct gpufleet GPU host on gpufleet's default stack, on Ubuntu 20.04 (the release whose
NVIDIA repository carries CUDA 11.2 and cuDNN 8.1), written out: the packages, pins, holds,
files and links the specification suite (test_gpu_host.py) checks on a real host, and that
tests/fakehost.py's converged host is built from. Literals, never gpufleet's own constants or
functions, so a change in gpufleet shows here as a failing test, not as a moved expectation.

Only the repository URLs and docker's settings come from inventory data (conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# R535: ubuntu2004's NVIDIA repository has no R580, gpufleet's default elsewhere.
NVIDIA_DRIVER_VERSION = "535.183.01"
CUDA_VERSION = "11.2"
CUDNN_VERSION = "8.1.1.33"

# The headless R535 driver with its proprietary kernel modules (R535 predates NVIDIA's switch to
# the open ones), every package pinned: pinning a metapackage alone pulls the newest release
# of the rest. No X server, no graphics libraries.
DRIVER_PACKAGES = (
    "nvidia-headless-535",
    "nvidia-headless-no-dkms-535",
    "nvidia-dkms-535",
    "nvidia-kernel-source-535",
    "nvidia-kernel-common-535",
    "nvidia-utils-535",
    "nvidia-compute-utils-535",
    "libnvidia-compute-535",
    "libnvidia-common-535",
    "libnvidia-extra-535",
    "libnvidia-decode-535",
    "libnvidia-encode-535",
    "libnvidia-cfg1-535",
    # Shipped with each driver release without the branch in its name.
    "nvidia-modprobe",
)
# Never on a headless host.
GRAPHICS_PACKAGES = ("xserver-xorg-core", "xserver-xorg-video-nvidia-535", "libnvidia-gl-535")
CONTAINER_TOOLKIT = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
CUDNN = ("libcudnn8", "libcudnn8-dev")

# Package -> the versions it may have (an apt/fnmatch pattern: any Debian revision); every one
# of them is held.
PINNED_PACKAGES: dict[str, str] = {
    **dict.fromkeys(DRIVER_PACKAGES, "535.183.01-*"),
    "cuda-toolkit-11-2": "11.2.2-*",
    # The build for CUDA 11.2: libcudnn8 8.1.1.33 exists for CUDA 10.2 as well.
    **dict.fromkeys(CUDNN, "8.1.1.33-*+cuda11.2"),
    **dict.fromkeys(CONTAINER_TOOLKIT, "1.17.8-*"),
}

NOUVEAU_BLACKLIST_PATH = "/etc/modprobe.d/blacklist-nouveau.conf"
PERSISTENCED_DROPIN_PATH = "/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf"
CUDA_PROFILE_PATH = "/etc/profile.d/cuda.sh"
CUDA_LOADER_PATH = "/etc/ld.so.conf.d/cuda.conf"
UNATTENDED_UPGRADES_PATH = "/etc/apt/apt.conf.d/51gpufleet-unattended-upgrades"
# Path -> exact contents.
MANAGED_FILES: dict[str, str] = {
    NOUVEAU_BLACKLIST_PATH: (
        "# Managed by gpufleet: the NVIDIA driver cannot load beside nouveau.\n"
        "blacklist nouveau\n"
        "options nouveau modeset=0\n"
    ),
    PERSISTENCED_DROPIN_PATH: (
        "# Managed by gpufleet: keep the GPUs initialised between jobs.\n"
        "[Unit]\n"
        "StopWhenUnneeded=false\n"
        "\n"
        "[Service]\n"
        "ExecStart=\n"
        "ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --persistence-mode"
        " --verbose\n"
    ),
    CUDA_PROFILE_PATH: (
        "# Managed by gpufleet.\n"
        'case ":$PATH:" in *":/usr/local/cuda/bin:"*) ;; '
        '*) export PATH="/usr/local/cuda/bin${PATH:+:$PATH}" ;; esac\n'
    ),
    CUDA_LOADER_PATH: "# Managed by gpufleet.\n/usr/local/cuda/lib64\n",
    UNATTENDED_UPGRADES_PATH: (
        "// Managed by gpufleet: the NVIDIA driver and the CUDA stack change only when gpufleet\n"
        "// pins them (a library upgrade under the loaded kernel module breaks NVML).\n"
        "Unattended-Upgrade::Package-Blacklist {\n"
        '    "nvidia-";\n'
        '    "libnvidia-";\n'
        '    "cuda-";\n'
        '    "libcuda1";\n'
        '    "libcudnn";\n'
        '    "libxnvctrl0";\n'
        '    "firmware-nvidia-";\n'
        '    "xserver-xorg-video-nvidia";\n'
        "};\n"
    ),
}

PERSISTENCED_BOOT_LINK = "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service"
# Link -> target, as gpufleet writes it (readlink, one level).
LINKS: dict[str, str] = {
    PERSISTENCED_BOOT_LINK: "/lib/systemd/system/nvidia-persistenced.service",
}
# Where /usr/local/cuda leads (through the `cuda` alternative where NVIDIA's packages set it).
CUDA_DEFAULT_LINK = "/usr/local/cuda"
CUDA_TOOLKIT_PATH = "/usr/local/cuda-11.2"

# Repository -> its keyring and source list.
REPOSITORIES: dict[str, tuple[str, str]] = {
    "cuda": ("/etc/apt/keyrings/cuda.gpg", "/etc/apt/sources.list.d/cuda.list"),
    "nvidia-container-toolkit": (
        "/etc/apt/keyrings/nvidia-container-toolkit.gpg",
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list",
    ),
}
# Without a mirror (nvidia_cuda_repo_url): of the OSes gpufleet supports, only Ubuntu 20.04 has
# CUDA 11.2 in NVIDIA's repository.
CUDA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2004/x86_64/"
CONTAINER_REPO_URL = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)/"
DEFAULT_RUNTIME = "nvidia"

DAEMON_JSON_PATH = "/etc/docker/daemon.json"
# The runtime gpufleet registers when the user has none called nvidia.
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}


def source_line(repository: str, url: str) -> str:
    """The repository's one source line: flat (suite `/`), signed by its own keyring only."""
    keyring, _ = REPOSITORIES[repository]
    return f"deb [signed-by={keyring}] {url} /\n"


@dataclass(frozen=True)
class HostData:
    """The inventory data the specification depends on."""

    cuda_repo_url: str
    container_repo_url: str
    default_runtime: str | None
    daemon_config: dict[str, Any]
    tensorflow_image: str
