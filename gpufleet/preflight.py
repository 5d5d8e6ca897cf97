"""
The one refusal path: a host whose data, state or repository keys are wrong is failed while its
deploy is planned, before its first operation, with every reason in one message. The other
hosts carry on, and the run exits non-zero.
"""

from __future__ import annotations

import logging
from pathlib import Path
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import State
from pyinfra.context import ctx_host

from gpufleet import run_summary
from gpufleet.artifacts import (
    Artifact,
    ArtifactError,
    artifact_size,
    cached,
    default_cache_dir,
    fetch_artifact,
    human_size,
)
from gpufleet.deploys.cuda import CUDA_REPO_NAME
from gpufleet.deploys.nvidia_container import CONTAINER_REPO_NAME
from gpufleet.facts import snapshot
from gpufleet.facts.gpu_host import GpuHostStateInfo, OsReleaseFields
from gpufleet.facts.pyinfra_internals import dry_run
from gpufleet.facts.secure_boot import SecureBootState
from gpufleet.repository_keys import RepositoryKeyError, fetch_keyring
from gpufleet.settings import (
    GpuSettings,
    InventoryData,
    SettingsError,
    read_settings,
)
from gpufleet.stack import catalog, compat, dcgm, installers
from gpufleet.stack.hardware import PciBus
from gpufleet.stack.installers import CudaInstallMethod, CudnnInstallMethod, InstalledForms
from gpufleet.stack.repositories import DriverNaming

logger = logging.getLogger("pyinfra")

REFUSAL_HEADLINE = "refusing to deploy, nothing was changed on the host:"

# What the planner makes of the host's Secure Boot state (absent: unknown).
SECURE_BOOT_ON = {
    SecureBootState.ENABLED: True,
    SecureBootState.DISABLED: False,
    SecureBootState.UNSUPPORTED: False,
}


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
    run_summary.record_refusal(problems)
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
    run_summary.track(settings.gpu_results_dir, tuple(repository_urls(settings)))
    for warning in settings.warnings:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    return settings


def repository_urls(settings: GpuSettings) -> list[str]:
    """The repositories the host may get: without a mirror, the CUDA repository's URL depends on
    the OS release (read in the same round trip), so NVIDIA's for every release."""
    cuda_urls = (
        [settings.nvidia_cuda_repo_url]
        if settings.nvidia_cuda_repo_url
        else [repository.url for repository in compat.CUDA_REPOSITORIES.values()]
    )
    return [settings.nvidia_container_repo_url, *cuda_urls]


def repository_pins(
    settings: GpuSettings, plan: compat.StackPlan, repositories: tuple[str, ...]
) -> dict[str | None, dict[str, dict[str, str | None]]]:
    """Per repository URL (None: the host's OS archive), what its packages are pinned to, as
    "data_key = value": packages."""
    driver = {
        f"nvidia_driver_version = {plan.driver.version!r}": catalog.driver_packages(plan.driver)
    }
    signed = catalog.signed_module_packages(plan.driver)
    if signed:
        flavour = f"nvidia_kernel_flavour = {plan.driver.kernel_flavour!r}"
        os_archive = {**driver, flavour: signed}
        pins: dict[str | None, dict[str, dict[str, str | None]]] = {None: os_archive}
        cuda: dict[str, dict[str, str | None]] = {}
    else:
        pins, cuda = {}, driver
    pins[plan.repository_url] = cuda
    if CONTAINER_REPO_NAME not in repositories:
        return pins
    if plan.methods.cuda is CudaInstallMethod.APT:
        cuda[f"cuda_package_version = {settings.cuda_package_version!r}"] = (
            catalog.cuda_toolkit_packages(settings.cuda_version, settings.cuda_package_version)
        )
    if plan.methods.cudnn is CudnnInstallMethod.APT:
        cuda[f"cudnn_version = {settings.cudnn_version!r}"] = catalog.cudnn_packages(
            settings.cudnn_version, settings.cuda_version
        )
    version = settings.nvidia_container_toolkit_version
    pins[settings.nvidia_container_repo_url] = {
        f"nvidia_container_toolkit_version = {version!r}": (
            catalog.container_toolkit_packages(version)
        )
    }
    return pins


def plan_or_refusal(
    settings: GpuSettings,
    host_state: GpuHostStateInfo,
    problems: list[str],
    repositories: tuple[str, ...],
) -> tuple[compat.StackPlan, dict[str, bytes]] | None:
    """
    The host's plan and the checked keyrings of ``repositories``; None, the host refused, when
    the stack does not fit the host, its apt does not offer a pin, or there are other
    ``problems``.
    """
    platform = compat.HostPlatform.from_os_release(
        host_state["os_release"],
        PciBus.from_devices(host_state["pci_devices"]),
        SECURE_BOOT_ON.get(host_state["secure_boot"]),
        host_state["kernel_release"],
    )
    installed = {
        name: state["version"]
        for name, state in host_state["packages"].items()
        if state["installed"]
    }
    plan, plan_problems = compat.plan_stack(
        settings.stack_request, platform, host_state["apt_offers"], installed
    )
    problems = [*plan_problems, *problems]
    if plan is not None:
        for url, pins in repository_pins(settings, plan, repositories).items():
            problems += compat.offer_problems(pins, host_state["apt_offers"], installed, url)
        problems += installers.switch_problems(
            plan.methods, installed_forms(settings, host_state, installed), settings.cuda_version
        )
        problems += installers.missing_artifact_keys(
            plan.methods, settings.cuda_package_version, artifact_keys(settings)
        )
        problems += signing_file_problems(settings, host_state["file_digests"])
        if settings.gpu_dcgm:
            problems += dcgm.dcgm_problems(plan.driver.branch, settings.gpu_dcgm_diag_level)
    keyrings = keyrings_or_refusal(settings, plan, problems, repositories)
    if plan is None or keyrings is None:
        return None
    for note in plan.notes:
        host.log_styled(note, fg="cyan", log_func=logger.info)
    for warning in plan.warnings:
        host.log_styled(warning, fg="yellow", log_func=logger.warning)
    return plan, keyrings


def signing_files(settings: GpuSettings) -> dict[str, str]:
    """The Machine Owner Key's files on the host, by data key."""
    files = {
        "nvidia_module_signing_key": settings.nvidia_module_signing_key,
        "nvidia_module_signing_cert": settings.nvidia_module_signing_cert,
    }
    return {key: path for key, path in files.items() if path}


def signing_file_problems(settings: GpuSettings, file_digests: dict[str, str]) -> list[str]:
    return [
        f"{key} = {path!r}: there is no such file on the host; enroll the key (mokutil "
        "--import) and put its files there, or fix the path"
        for key, path in signing_files(settings).items()
        if path not in file_digests
    ]


def planned_driver_version(settings: GpuSettings) -> str | None:
    """The driver version the host's plan pins (its OS decides the default); None, the host
    refused, when the stack does not fit the host."""
    os_release = snapshot.current(OsReleaseFields)
    plan, problems = compat.plan_stack(
        settings.stack_request, compat.HostPlatform.from_os_release(os_release)
    )
    if plan is None:
        refuse_host(problems)
        return None
    return plan.driver.version


def offered_packages(settings: GpuSettings) -> list[str]:
    """
    What the host read asks apt about (apt-cache madison): every package a plan for this host
    could pin. The plan's driver depends on the host's OS, which the same read tells, so the
    driver's names come for each OS naming, module flavour and candidate branch (and, from
    Ubuntu's archive, for the kernel flavours whose signed modules the running kernel could
    ask for).
    """
    version = settings.nvidia_driver_version
    branch = settings.nvidia_driver_branch or (version.split(".")[0] if version else None)
    branches = (
        {branch}
        if branch
        else {compat.default_driver_branch(r) for r in compat.CUDA_REPOSITORIES.values()}
    )
    source = settings.nvidia_driver_source
    flavours = [""]
    if source is catalog.DriverSource.UBUNTU:
        chosen = settings.nvidia_kernel_flavour
        flavours = [chosen] if chosen else catalog.UBUNTU_KERNEL_FLAVOURS
    choices = [
        catalog.DriverChoice(naming, candidate, "0", modules, False, True, source, flavour)
        for candidate in branches
        for naming in DriverNaming
        for modules in catalog.KernelModules
        for flavour in flavours
    ]
    names = {
        name
        for choice in choices
        for packages in (catalog.driver_packages(choice), catalog.signed_module_packages(choice))
        for name in packages
    }
    names |= set(catalog.cuda_toolkit_packages(settings.cuda_version, "0"))
    names |= set(catalog.CUDNN_PACKAGES)
    names |= set(catalog.CONTAINER_TOOLKIT_PACKAGES)
    return sorted(names)


def keyrings_or_refusal(
    settings: GpuSettings,
    plan: compat.StackPlan | None,
    problems: list[str],
    repositories: tuple[str, ...],
) -> dict[str, bytes] | None:
    """
    The checked keyrings of ``repositories`` when the host has a plan and no other
    ``problems``; else None, the host refused with every problem, its keys' included.
    """
    keyrings: dict[str, bytes] = {}
    if plan is not None and not problems:
        keyrings, key_problems = repository_keyrings(settings, plan, repositories)
        problems = [*problems, *key_problems]
    if problems:
        refuse_host(problems)
        return None
    return keyrings


def repository_keyrings(
    settings: GpuSettings, plan: compat.StackPlan, repositories: tuple[str, ...]
) -> tuple[dict[str, bytes], list[str]]:
    """
    The checked keyring of each of ``repositories`` (CUDA_REPO_NAME, CONTAINER_REPO_NAME),
    fetched on the controller once per run, and the problems of those that cannot be used.
    """
    keys = {
        CUDA_REPO_NAME: (
            "nvidia_cuda_repo_key_url",
            settings.cuda_repo_key_url(plan),
            settings.cuda_repo_key_fingerprint(plan),
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


def installed_forms(
    settings: GpuSettings, host_state: GpuHostStateInfo, installed: dict[str, str]
) -> InstalledForms:
    files = host_state["toolkit_files"]
    return InstalledForms(
        apt_toolkit=catalog.cuda_package_name(settings.cuda_version) in installed,
        runfile_toolkit=files["runfile_uninstaller"],
        apt_cudnn=any(name in installed for name in catalog.CUDNN_PACKAGES),
        archive_cudnn=any(name.startswith("libcudnn") for name in files["libraries"]),
    )


def artifact_keys(settings: GpuSettings) -> dict[str, str | None]:
    return {
        "cuda_runfile_url": settings.cuda_runfile_url,
        "cuda_runfile_sha256": settings.cuda_runfile_sha256,
        "cudnn_archive_url": settings.cudnn_archive_url,
        "cudnn_archive_sha256": settings.cudnn_archive_sha256,
        "tensorflow_image_archive_url": settings.tensorflow_image_archive_url,
        "tensorflow_image_archive_sha256": settings.tensorflow_image_archive_sha256,
    }


def needed_artifacts(
    settings: GpuSettings, plan: compat.StackPlan, host_state: GpuHostStateInfo
) -> dict[str, Artifact]:
    """
    The artifacts this host needs now, by their _url key's prefix: those of components it does
    not have (a converged host needs none, so nothing is fetched or sent again).
    """
    sources = installers.artifact_sources(settings.cuda_package_version, artifact_keys(settings))
    files = host_state["toolkit_files"]
    toolkit = host_state["cuda"]["toolkits"].get(settings.cuda_version)
    wanted = {
        "cuda_runfile": plan.methods.cuda is CudaInstallMethod.RUNFILE
        and not installers.runfile_toolkit_installed(
            files["cuda_version"],
            toolkit["nvcc_release"] if toolkit else None,
            files["libraries"],
            settings.cuda_package_version,
        ),
        "cudnn_archive": plan.methods.cudnn is CudnnInstallMethod.ARCHIVE
        and not installers.archive_cudnn_installed(
            files["cudnn_version"], files["libraries"], settings.cudnn_version
        ),
        "tensorflow_image_archive": host_state["tensorflow_image_id"] is None,
    }
    needed = {}
    for artifact, wanted_now in wanted.items():
        url, sha256 = sources[artifact]
        if wanted_now and url and sha256:
            needed[artifact] = Artifact(f"{artifact}_url", f"{artifact}_sha256", url, sha256)
    return needed


def artifact_cache(settings: GpuSettings) -> Path:
    if settings.gpu_artifact_cache:
        return Path(settings.gpu_artifact_cache).expanduser()
    return default_cache_dir()


def artifacts_or_refusal(
    settings: GpuSettings, plan: compat.StackPlan, host_state: GpuHostStateInfo
) -> dict[str, str] | None:
    """
    Per artifact this host needs and does not hold yet, the controller's verified copy to
    send, each fetched into the cache at most once per run. Logs the methods and the artifacts;
    a dry run fetches nothing. None, the host refused, when one cannot be fetched or has another
    digest than its pin.
    """
    cache = artifact_cache(settings)
    needed = needed_artifacts(settings, plan, host_state)
    on_host = set(host_state["host_artifacts"])
    dry = dry_run()
    to_send: dict[str, str] = {}
    notes = []
    problems = []
    for name, artifact in needed.items():
        if artifact.sha256 in on_host:
            notes.append(f"{name} already on the host")
            continue
        if dry:
            fetch = "in the artifact cache" if cached(artifact, cache) else "to fetch"
            size = human_size(artifact_size(artifact, cache))
            notes.append(f"{name} ({size}) {fetch}, to send")
            continue
        try:
            fetched = fetch_artifact(artifact, cache)
        except ArtifactError as error:
            problems.append(str(error))
            continue
        to_send[name] = str(fetched)
        notes.append(f"{name} ({human_size(fetched.stat().st_size)}) to send")
    if problems:
        refuse_host(problems)
        return None
    methods = (
        f"CUDA {settings.cuda_package_version} from {plan.methods.cuda.value}, "
        f"cuDNN {settings.cudnn_version} from {plan.methods.cudnn.value}"
    )
    host.log_styled(
        f"{methods}; artifacts: {'; '.join(notes) or 'none needed'}",
        fg="cyan",
        log_func=logger.info,
    )
    return to_send
