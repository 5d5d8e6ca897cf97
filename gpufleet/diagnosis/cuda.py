"""The CUDA layer: the pinned toolkit and cuDNN, installed and found by the dynamic loader."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpufleet.diagnosis.catalog import RERUN
from gpufleet.diagnosis.checks import Check, outcome, unverified
from gpufleet.diagnosis.evidence import Expectations, HostEvidence
from gpufleet.stack.catalog import cuda_package_name
from gpufleet.stack.versions import CudnnPin, major_minor


def resolved_libraries(ldconfig: Sequence[str]) -> dict[str, str]:
    """`ldconfig -p` lines -> {soname: path}, first entry wins as in the loader."""
    libraries: dict[str, str] = {}
    for line in ldconfig:
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if match:
            libraries.setdefault(match.group(1), match.group(3))
    return libraries


def check_cuda(evidence: HostEvidence, expectations: Expectations) -> list[Check]:
    cuda = expectations.cuda_version
    install_toolkit = f"install {cuda_package_name(expectations.cuda_version)} ({RERUN})"
    toolkits = (evidence.get("cuda") or {"toolkits": {}})["toolkits"]
    toolkit = toolkits.get(cuda)
    installed = ", ".join(sorted(toolkits)) or "none"
    checks = [
        outcome(
            f"CUDA {cuda} toolkit installed",
            toolkit is not None,
            f"toolkits: {installed}",
            f"no CUDA {cuda} toolkit in /usr/local",
            install_toolkit,
        )
    ]
    if toolkit is not None:
        release = toolkit["nvcc_release"]
        checks.append(
            outcome(
                "nvcc release",
                release == cuda,
                f"{toolkit['path']}/bin/nvcc: release {release or 'missing'}",
                f"nvcc in {toolkit['path']} is missing or reports another release",
                install_toolkit,
            )
        )
    cudnn = evidence.get("cudnn_version")
    wanted_cudnn = CudnnPin(expectations.cudnn_version).series
    install_cudnn = (
        f"install libcudnn8 and libcudnn8-dev {expectations.cudnn_version} for CUDA {cuda} "
        f"({RERUN})"
    )
    checks.append(
        outcome(
            f"cuDNN {wanted_cudnn}.x",
            cudnn is not None and major_minor(cudnn) == wanted_cudnn,
            cudnn or "no cuDNN headers",
            f"cuDNN {cudnn or 'missing'} instead of {expectations.cudnn_version}",
            install_cudnn,
        )
    )
    ldconfig = evidence.get("ldconfig")
    cudnn_major = CudnnPin(expectations.cudnn_version).major
    cuda_major = cuda.split(".")[0]
    for soname, fix in (
        (f"libcudnn.so.{cudnn_major}", install_cudnn),
        # CUDA 11.x runtimes all carry the soname libcudart.so.11.0.
        (f"libcudart.so.{cuda_major}.0", install_toolkit),
    ):
        name = f"ldconfig resolves {soname}"
        if ldconfig is None:
            checks.append(unverified(name, "ldconfig -p not gathered"))
            continue
        path = resolved_libraries(ldconfig).get(soname)
        checks.append(
            outcome(
                name,
                path is not None,
                path or "not in the loader cache",
                f"the dynamic loader cannot find {soname}",
                fix,
            )
        )
    return checks
