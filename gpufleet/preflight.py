"""
The one refusal path: a host whose data, state or repository keys are wrong is failed while its
deploy is planned, before its first operation, with every reason in one message. The other
hosts carry on, and the run exits non-zero.
"""

from __future__ import annotations

import logging
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import State
from pyinfra.context import ctx_host

from gpufleet.deploys.cuda import CUDA_REPO_NAME
from gpufleet.deploys.nvidia_container import CONTAINER_REPO_NAME
from gpufleet.repository_keys import RepositoryKeyError, fetch_keyring
from gpufleet.settings import GpuSettings, InventoryData, SettingsError, read_settings
from gpufleet.stack import compat

logger = logging.getLogger("pyinfra")

REFUSAL_HEADLINE = "refusing to deploy, nothing was changed on the host:"


# Per run (pyinfra State): each refusal message, and the host it was first printed for.
_first_refused: WeakKeyDictionary[State, dict[str, str]] = WeakKeyDictionary()


def refusal_message(problems: list[str]) -> str:
    listing = "\n".join(f"  - {problem}" for problem in problems)
    return f"{REFUSAL_HEADLINE}\n{listing}"


def refuse_host(problems: list[str]) -> None:
    """
    Fail the current host now, during planning (in `--dry` runs too), saying why: none of its
    operations run. pyinfra fails a host whose fact cannot be read the same way.
    """
    # The Host itself, not the context's proxy for it: pyinfra reads the set after the run.
    refused = ctx_host.get()
    message = refusal_message(problems)
    # Bad group data refuses every host for the same reasons: said once, then named per host.
    first = _first_refused.setdefault(refused.state, {}).setdefault(message, refused.name)
    if first != refused.name:
        message = f"refused for the same reasons as {first}"
    host.log_styled(message, fg="red", bold=True, log_func=logger.error)
    refused.state.fail_hosts({refused})


def settings_or_refusal(data: InventoryData) -> GpuSettings | None:
    """
    The current host's settings from its inventory ``data`` (an entry deploy's host.data), with
    their warnings logged; None, the host refused, when they cannot be used.
    """
    try:
        settings = read_settings(data)
    except SettingsError as error:
        refuse_host([str(error)])
        return None
    for warning in settings.warnings:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    return settings


def keyrings_or_refusal(
    settings: GpuSettings,
    platform: compat.HostPlatform,
    problems: list[str],
    repositories: tuple[str, ...],
) -> dict[str, bytes] | None:
    """
    The checked keyrings of ``repositories`` when the host has no other ``problems``; else None,
    the host refused with every problem, its keys' included.
    """
    keyrings: dict[str, bytes] = {}
    if not problems:
        keyrings, key_problems = repository_keyrings(settings, platform, repositories)
        problems = [*problems, *key_problems]
    if problems:
        refuse_host(problems)
        return None
    return keyrings


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
