"""
The one refusal path: a host whose data, state or repository keys are wrong is failed while its
deploy is planned, before its first operation, with every reason in one message. The other
hosts carry on, and the run exits non-zero.
"""

from __future__ import annotations

import logging

from pyinfra import host
from pyinfra.context import ctx_host

from gpufleet.deploys.cuda import CUDA_REPO_NAME
from gpufleet.deploys.nvidia_container import CONTAINER_REPO_NAME
from gpufleet.repository_keys import RepositoryKeyError, fetch_keyring
from gpufleet.settings import GpuSettings
from gpufleet.stack import compat

logger = logging.getLogger("pyinfra")

REFUSAL_HEADLINE = "refusing to deploy, nothing was changed on the host:"


def refusal_message(problems: list[str]) -> str:
    listing = "\n".join(f"  - {problem}" for problem in problems)
    return f"{REFUSAL_HEADLINE}\n{listing}"


def refuse_host(problems: list[str]) -> None:
    """
    Fail the current host now, during planning (in `--dry` runs too), saying why: none of its
    operations run. pyinfra fails a host whose fact cannot be read the same way.
    """
    host.log_styled(refusal_message(problems), fg="red", bold=True, log_func=logger.error)
    # The Host itself, not the context's proxy for it: pyinfra reads the set after the run.
    refused = ctx_host.get()
    refused.state.fail_hosts({refused})


def repository_keyrings(
    settings: GpuSettings, platform: compat.HostPlatform, repositories: tuple[str, ...]
) -> tuple[dict[str, bytes], list[str]]:
    """
    The checked keyring of each of ``repositories`` (CUDA_REPO_NAME, CONTAINER_REPO_NAME),
    fetched on the controller once per run, and the problems of those that cannot be used.
    """
    keys = {
        CUDA_REPO_NAME: (
            "nvidia_cuda_repo_key_url",
            settings.cuda_repo_key_url(platform),
            settings.nvidia_cuda_repo_key_fingerprint,
        ),
        CONTAINER_REPO_NAME: (
            "nvidia_container_repo_key_url",
            settings.nvidia_container_repo_key_url,
            settings.nvidia_container_repo_key_fingerprint,
        ),
    }
    keyrings: dict[str, bytes] = {}
    problems: list[str] = []
    for repository in repositories:
        try:
            keyrings[repository] = fetch_keyring(*keys[repository])
        except RepositoryKeyError as error:
            problems.append(str(error))
    return keyrings, problems
