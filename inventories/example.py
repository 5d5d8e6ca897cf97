"""
An example fleet in one file: copy it, list your hosts, and run

    pyinfra inventories/<fleet>.py deploys/gpu_host.py

Every gpufleet key is optional (README.md, "Inventory data", lists them all). GPUFLEET_DATA sets
one on purpose, docker_daemon_config ("set here"); every other key in it shows gpufleet's
default ("default"), so deleting that line changes nothing. The host data sets how pyinfra
connects. For data kept in files per group, the way Ansible keeps group_vars, see
inventories/example-fleet/ (README.md, "Group data").
"""

GPUFLEET_DATA = {
    # The driver, unset: R580 (580.159.04) where the host's NVIDIA repository carries it, else
    # the newest branch it carries that gpufleet pins (Ubuntu 20.04: 535.183.01); kernel modules
    # chosen from the host's GPUs, else open from R560. Pin both to hold the fleet on one release:
    # "nvidia_driver_branch": "580",
    # "nvidia_driver_version": "580.159.04",
    # "nvidia_kernel_modules": "open",  # or "proprietary"
    # The compute part of the driver only, no X server (default).
    "nvidia_driver_headless": True,
    # CUDA 11.2 + cuDNN 8.1 is TensorFlow 2.9's stack (default); NVIDIA's apt repositories carry
    # it for Ubuntu 20.04 only, elsewhere it comes from the runfile and the archive.
    "cuda_version": "11.2",
    "cuda_package_version": "11.2.2",
    "cudnn_version": "8.1.1.33",
    # nvidia-container-toolkit's exact version (default).
    "nvidia_container_toolkit_version": "1.17.8",
    # Air-gapped fleets point these at their mirrors (unset: NVIDIA's). A mirror whose path
    # names NVIDIA's directory is held to what that repository carries, and once apt has its
    # lists, the host's apt must offer every pinned version.
    # "nvidia_cuda_repo_url": "http://mirror.internal/cuda/ubuntu2004/x86_64/",
    # "nvidia_cuda_repo_key_url": "http://mirror.internal/cuda/3bf863cc.pub",
    # Unset: the key NVIDIA signs the repository with (3bf863cc; debian13: 8793F200).
    # "nvidia_cuda_repo_key_fingerprint": "EB693B3035CD5710E231E123A4B469963BF863CC",
    # The key the container toolkit's repository must be signed with (default).
    "nvidia_container_repo_key_fingerprint": "C95B321B61E88C1809C4F759DDCAE044F796ECB0",
    # Docker's default runtime in /etc/docker/daemon.json (default).
    "docker_default_runtime": "nvidia",
    # More daemon.json keys, merged; your other keys stay (set here; default: {}).
    "docker_daemon_config": {"default-shm-size": "1G"},
    # A driver change that needs a reboot only reboots when this is true (default).
    "gpu_reboot_allowed": False,
    # The image whose TensorFlow the stack must fit and the smoke test runs in (default).
    "tensorflow_image": "tensorflow/tensorflow:2.9.0-gpu",
    # Users put in the docker group; none is created (default: none).
    # "docker_users": ["alice", "bob"],
    # NCCL's interface in /etc/nccl.conf, checked against the host's (unset: no file).
    # "nccl_socket_ifname": "=eth0",
    # Rollouts (gpufleet rollout): drain each Slurm node and wait for its jobs first (default:
    # "none"), at most this many hosts out of service at once (default: upgrade_batch_size).
    # "gpu_scheduler": "slurm",
    # "upgrade_max_unavailable": "25%",
}

# A group is (hosts, group data); host data wins over group data.
training = (
    [
        # pyinfra's connection data (set here): log in as ubuntu, run everything with sudo.
        ("gpu-01.example.com", {"ssh_user": "ubuntu", "_sudo": True}),
        ("gpu-02.example.com", {"ssh_user": "ubuntu", "_sudo": True}),
    ],
    GPUFLEET_DATA,
)
