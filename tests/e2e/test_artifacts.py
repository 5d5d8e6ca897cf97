"""
What apt cannot carry, end to end: on Ubuntu 22.04 and Debian 12, whose NVIDIA repositories have
no CUDA 11.2, the toolkit comes from NVIDIA's runfile and cuDNN from its tar archive, each
fetched once per fleet by the controller, sent to the hosts and checked there; a second run
fetches, sends and runs nothing; a wrong digest refuses its host alone, before any change.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetFactory, TestHost
from testbed.images import build_image_tarball
from testbed.repos import RepoTree
from testbed.rootfs import default_cache_dir
from testbed.runs import repo_data, run_deploy
from testbed.standin_artifacts import (
    CUDNN_ARCHIVE_NAME,
    RUNFILE_NAME,
    ArtifactServer,
    build_artifacts,
    build_image_archive,
)

pytestmark = pytest.mark.e2e

# The stand-in runfile appends a line per run; with --driver it leaves this marker.
RUNFILE_RUNS = "/var/log/gpufleet-standin/runfile-runs.log"
RUNFILE_PAUSE = "/etc/gpufleet-standin/runfile-pause"
TENSORFLOW_IMAGE = "tensorflow/tensorflow:2.9.0-gpu"
BUNDLED_DRIVER_MARKER = "/var/log/gpufleet-standin/runfile-driver-installed"
TOOLKIT = "/usr/local/cuda-11.2"
# The R580 release each stand-in repository carries (gpufleet's own pin is a later one).
R580_CARRIED = {"ubuntu22.04": "580.126.16", "debian12": "580.105.08"}
# cuDNN 8.1.1's archive, as the toolkit holds it afterwards: the chain of each library.
CUDNN_LIBRARIES = [
    f"{library}{suffix}"
    for library in (
        "libcudnn",
        "libcudnn_adv_infer",
        "libcudnn_adv_train",
        "libcudnn_cnn_infer",
        "libcudnn_cnn_train",
        "libcudnn_ops_infer",
        "libcudnn_ops_train",
    )
    for suffix in (".so -> " + library + ".so.8", ".so.8 -> " + library + ".so.8.1.1", ".so.8.1.1")
]


def ssh_ok(fleet: Fleet, host: TestHost, command: str) -> str:
    result = fleet.ssh(host, command)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_a_fleet_without_cuda_11_2_in_apt_gets_nvidias_runfile_and_archive(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    releases = ["ubuntu22.04", "debian12", "ubuntu22.04", "debian12"]
    fleet = fleet_factory(count=4, os_release=releases)
    built = build_artifacts(default_cache_dir())
    good, other, third, wrong = fleet.hosts
    with ArtifactServer(fleet, built.directory) as server:
        artifacts = {
            "cuda_runfile_url": server.url(RUNFILE_NAME),
            "cuda_runfile_sha256": built.runfile_sha256,
            "cudnn_archive_url": server.url(CUDNN_ARCHIVE_NAME),
            "cudnn_archive_sha256": built.cudnn_archive_sha256,
            "gpu_artifact_cache": str(tmp_path / "artifact-cache"),
            "gpu_verify": False,
        }
        host_data = {
            host.name: {
                **repo_data(repo_tree, host.os_release),
                **artifacts,
                "nvidia_driver_version": R580_CARRIED[host.os_release.name],
            }
            for host in fleet.hosts
        }
        wrong_digest = "0" * 64
        host_data[wrong.name]["cudnn_archive_sha256"] = wrong_digest
        inventory = fleet.write_inventory(tmp_path / "inventory.py", host_data=host_data)
        wrong_before = ssh_ok(
            fleet, wrong, "ls -AR /var/cache/gpufleet /usr/local 2>&1; dpkg -l | sort"
        )

        run = run_deploy(fleet, inventory)
        (tmp_path / "first-run.log").write_text(run.output)
        assert run.returncode != 0  # the one wrong digest fails its host
        flat = " ".join(run.output.split())
        assert (
            f"cudnn_archive_sha256 = '{wrong_digest}' does not match cudnn_archive_url = "
            f"'{server.url(CUDNN_ARCHIVE_NAME)}': its sha256 is {built.cudnn_archive_sha256}"
        ) in flat
        # The controller fetched each artifact once for the whole fleet.
        assert server.requests_for(RUNFILE_NAME) == 1
        assert server.requests_for(CUDNN_ARCHIVE_NAME) == 1

        for host in (good, other, third):
            nvcc = ssh_ok(fleet, host, f"{TOOLKIT}/bin/nvcc --version")
            assert "Cuda compilation tools, release 11.2, V11.2.152" in nvcc
            assert '"version" : "11.2.2"' in ssh_ok(fleet, host, f"cat {TOOLKIT}/version.json")
            # The toolkit only: the runfile's bundled 460.32.03 driver never ran.
            assert ssh_ok(fleet, host, f"test ! -e {BUNDLED_DRIVER_MARKER} && echo absent") == (
                "absent\n"
            )
            assert len(ssh_ok(fleet, host, f"cat {RUNFILE_RUNS}").splitlines()) == 1
            libraries = ssh_ok(
                fleet,
                host,
                f"cd {TOOLKIT}/lib64 && for f in libcudnn*.so*; do "
                'if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$f"; fi; done',
            ).splitlines()
            assert sorted(libraries) == sorted(CUDNN_LIBRARIES)
            assert "#define CUDNN_PATCHLEVEL 1" in ssh_ok(
                fleet, host, f"cat {TOOLKIT}/include/cudnn_version.h"
            )
            # The loader finds the runtime and cuDNN through gpufleet's ld.so.conf.d entry.
            loader = ssh_ok(fleet, host, "ldconfig -p")
            assert "libcudart.so.11.0" in loader and "libcudnn.so.8" in loader
            assert ssh_ok(fleet, host, "readlink -f /usr/local/cuda").strip() == TOOLKIT
            # The host keeps the artifacts it received, by digest.
            kept = ssh_ok(fleet, host, "ls /var/cache/gpufleet/artifacts").split()
            assert sorted(kept) == sorted([built.runfile_sha256, built.cudnn_archive_sha256])

        # The refused host has nothing of either artifact, and is as it was.
        assert (
            ssh_ok(fleet, wrong, "ls -AR /var/cache/gpufleet /usr/local 2>&1; dpkg -l | sort")
            == wrong_before
        )

        # A second run, the refused host's digest fixed: the converged hosts change, get and run
        # nothing, and the controller's cache serves the refused host without a fetch.
        host_data[wrong.name]["cudnn_archive_sha256"] = built.cudnn_archive_sha256
        rerun_inventory = fleet.write_inventory(tmp_path / "rerun.py", host_data=host_data)
        run = run_deploy(fleet, rerun_inventory)
        assert run.returncode == 0, run.output[-6000:]
        assert server.requests_for(RUNFILE_NAME) == 1
        assert server.requests_for(CUDNN_ARCHIVE_NAME) == 1  # the controller's cache served it
        changed = run.changed()
        for host in (good, other, third):
            assert changed.get(host.address, []) == [], changed.get(host.address)
            assert len(ssh_ok(fleet, host, f"cat {RUNFILE_RUNS}").splitlines()) == 1


def test_an_interrupted_runfile_is_finished_and_an_air_gapped_host_loads_its_image(
    fleet_factory: FleetFactory, repo_tree: RepoTree, tmp_path: Path
) -> None:
    fleet = fleet_factory(count=1, os_release="ubuntu22.04")
    (host,) = fleet.hosts
    cache_dir = default_cache_dir()
    built = build_artifacts(cache_dir)
    image = build_image_archive(
        build_image_tarball("debian12", cache_dir, []), TENSORFLOW_IMAGE, tmp_path / "tf.tar"
    )
    image_sha256 = hashlib.sha256(image.read_bytes()).hexdigest()
    # No route but the link to the controller: the host reaches nothing else.
    assert ssh_ok(fleet, host, "ip -4 route show default") == ""
    with ArtifactServer(fleet, built.directory, {image.name: image}) as server:
        data = {
            **repo_data(repo_tree, host.os_release),
            "nvidia_driver_version": R580_CARRIED["ubuntu22.04"],
            "cuda_runfile_url": server.url(RUNFILE_NAME),
            "cuda_runfile_sha256": built.runfile_sha256,
            "cudnn_archive_url": server.url(CUDNN_ARCHIVE_NAME),
            "cudnn_archive_sha256": built.cudnn_archive_sha256,
            "tensorflow_image_archive_url": server.url(image.name),
            "tensorflow_image_archive_sha256": image_sha256,
            "gpu_artifact_cache": str(tmp_path / "artifact-cache"),
            "gpu_verify": False,
        }
        inventory = fleet.write_inventory(tmp_path / "inventory.py", data)

        # The runfile stops after version.json and nvcc, before the libraries: kill it there.
        ssh_ok(fleet, host, "mkdir -p /etc/gpufleet-standin && echo 600 > " + RUNFILE_PAUSE)
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(run_deploy, fleet, inventory)
            deadline = time.monotonic() + 600
            while fleet.ssh(host, f"test -s {RUNFILE_RUNS}").returncode != 0:
                assert time.monotonic() < deadline and not first.done(), "the runfile never ran"
                time.sleep(1)
            time.sleep(2)
            # "[s]h": the pattern does not match this command's own shell.
            runfile = f"[s]h /var/cache/gpufleet/artifacts/{built.runfile_sha256}"
            ssh_ok(fleet, host, f"pkill -f '{runfile}'; rm {RUNFILE_PAUSE}")
            interrupted = first.result()
        assert interrupted.returncode != 0
        assert '"version" : "11.2.2"' in ssh_ok(fleet, host, f"cat {TOOLKIT}/version.json")
        assert ssh_ok(fleet, host, f"ls {TOOLKIT}/lib64/ 2>&1 | grep -c libcudart || true") == "0\n"

        run = run_deploy(fleet, inventory)
        assert run.returncode == 0, run.output[-6000:]
        # The next run finished it: the runfile ran a second time, and the runtime is there.
        assert len(ssh_ok(fleet, host, f"cat {RUNFILE_RUNS}").splitlines()) == 2
        assert "libcudart.so.11.0" in ssh_ok(fleet, host, "ldconfig -p")
        # The image came from its archive, sent by the controller.
        inspect = f"docker image inspect --format '{{{{.RepoTags}}}}' {TENSORFLOW_IMAGE}"
        assert ssh_ok(fleet, host, inspect) == f"[{TENSORFLOW_IMAGE}]\n"
        assert server.requests_for(image.name) == 1
        assert server.requests_for(RUNFILE_NAME) == 1

        again = run_deploy(fleet, inventory)
        assert again.returncode == 0, again.output[-6000:]
        assert again.changed().get(host.address, []) == []
        assert server.requests_for(image.name) == 1
