"""
Signed apt repositories and pinned, held packages.

Repositories get a keyring of their own under /etc/apt/keyrings and a `signed-by` source line:
never apt-key, never trusted=yes. The key is fetched on the controller and its fingerprint checked
against the pinned one before anything reaches the host.
"""

from __future__ import annotations

import posixpath
import shlex
from fnmatch import fnmatchcase

from pyinfra import host
from pyinfra.api import operation

from gpufleet.facts import snapshot
from gpufleet.facts.apt import AptSourceFiles, DebPackageState, DebPackageStates
from gpufleet.operations.managed_files import upload_changed
from gpufleet.stack import urls
from gpufleet.stack.versions import pattern_upstream, upstream_version, version_move

KEYRING_DIR = "/etc/apt/keyrings"
SOURCES_DIR = "/etc/apt/sources.list.d"

AUTH_DIR = "/etc/apt/auth.conf.d"
# Seconds apt waits for a repository to answer, with no retry: a source that never answers
# fails in seconds, not after apt 2.x's 120 s per try and three retries per file.
ACQUIRE_TIMEOUT = 30
# Package changes run one at a time per host (this lock), as transient systemd units.
TRANSACTION_LOCK = "/run/lock/gpufleet-apt.lock"
TRANSACTION_LOG = "/var/log/gpufleet/apt.log"


def apt_get(lock_timeout: int) -> str:
    """apt-get, non-interactive, waiting up to ``lock_timeout`` s for another process's lock."""
    return (
        f"DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout={lock_timeout}"
        f" -o Acquire::http::Timeout={ACQUIRE_TIMEOUT} -o Acquire::https::Timeout={ACQUIRE_TIMEOUT}"
        " -o Acquire::Retries=0"
        " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
    )


def source_line(url: str, keyring_path: str) -> str:
    """A flat-repository source line (NVIDIA's CUDA and container repos are flat: suite '/')."""
    return f"deb [signed-by={keyring_path}] {urls.without_credentials(url)} /\n"


def auth_entry(credentials: urls.Credentials) -> str:
    """The repository's login in apt's netrc-like auth.conf format (apt_auth.conf(5))."""
    return (
        f"machine {credentials.machine} login {credentials.login} password {credentials.password}\n"
    )


def repository_files(repository: str) -> tuple[str, str]:
    """The repository's keyring and source list paths."""
    return f"{KEYRING_DIR}/{repository}.gpg", f"{SOURCES_DIR}/{repository}.list"


def auth_file(repository: str) -> str:
    return f"{AUTH_DIR}/{repository}.conf"


def take_over_command(path: str, location: str, sources_path: str) -> str:
    """
    Disable another source file's lines for ``location``: apt refuses two entries for one URL
    with different signed-by keyrings ("Conflicting values set for option Signed-By"), and
    NVIDIA's cuda-keyring package writes exactly such an entry. A deb822 .sources file is set
    aside whole (apt skips *.disabled files silently); in a one-line-per-source file only those
    lines become comments.
    """
    quoted = shlex.quote(path)
    if path.endswith(".sources"):
        return f"mv -f {quoted} {shlex.quote(path + '.disabled')}"
    note = f"# disabled by gpufleet, which manages this repository in {sources_path}: "
    program = (
        'index($0, ENVIRON["LOCATION"]) && $0 !~ /^[[:space:]]*#/ '
        '{ print ENVIRON["NOTE"] $0; next } { print }'
    )
    return (
        f"LOCATION={shlex.quote(location)} NOTE={shlex.quote(note)} awk {shlex.quote(program)} "
        f"{quoted} > {quoted}.gpufleet-new && cat {quoted}.gpufleet-new > {quoted} "
        f"&& rm -f {quoted}.gpufleet-new"
    )


@operation()
def signed_repository(repository: str, url: str, keyring: bytes):
    """
    Add a flat apt repository signed by its own keyring, taking over other source files'
    entries for the same URL.

    + repository: file name stem for /etc/apt/keyrings/<name>.gpg, sources.list.d/<name>.list
      and (for a URL with `user:password@`) auth.conf.d/<name>.conf
    + url: repository URL (a flat repo: `deb <url> /`)
    + keyring: binary OpenPGP keyring (already checked against the pinned fingerprint)

    Credentials in the URL go to apt's auth.conf.d, mode 600, never into the world-readable
    source list.
    """
    keyring_path, sources_path = repository_files(repository)
    location = urls.location(url)
    others = [
        path
        for path in snapshot.current(AptSourceFiles, locations=[location]).get(location, [])
        if path != sources_path
    ]
    commands = [
        *upload_changed(
            {keyring_path: keyring, sources_path: source_line(url, keyring_path).encode()}, "644"
        ),
        *(take_over_command(path, location, sources_path) for path in others),
    ]
    login = urls.credentials(url)
    if login is not None:
        commands += upload_changed({auth_file(repository): auth_entry(login).encode()}, "600")
    if not commands:
        host.noop(f"apt repository {repository} is already configured")
        return
    yield from commands


def configure_pending(lock_timeout: int) -> str:
    """
    `dpkg --configure -a`, which finishes what an interrupted run left half-configured, waiting
    up to ``lock_timeout`` s while another process (unattended-upgrades, a user's apt) holds
    dpkg's lock: dpkg itself fails at once. The wait is logged with the holder, and so is the
    failure when the lock outlives it.
    """
    errors = "/run/gpufleet-dpkg.err"
    # dpkg 1.20 and later name the holder's pid; Ubuntu 20.04's 1.19 does not, and the kernel's
    # lock table (lslocks, util-linux) tells it instead.
    holder = (
        f"pid=$(sed -n 's/.*locked by another process with pid \\([0-9]*\\).*/\\1/p' {errors}); "
        '[ -n "$pid" ] || pid=$(lslocks -n -r -o PID,PATH 2>/dev/null '
        "| awk '$2 ~ \"^/var/lib/dpkg/lock\" { print $1; exit }'); "
        'holder="${pid:+pid $pid, $(ps -o args= -p "$pid")}"; '
        f'holder="${{holder:-$(head -n 1 {errors})}}"; '
    )
    return (
        f"( deadline=$(( $(date +%s) + {lock_timeout} )); waiting=; "
        f"until dpkg --configure -a 2>{errors}; do "
        f"if ! grep -q lock {errors}; then cat {errors} >&2; exit 1; fi; {holder}"
        'if [ "$(date +%s)" -ge "$deadline" ]; then '
        f'echo "gpufleet: the dpkg lock is still held after {lock_timeout}s '
        '(gpu_apt_lock_timeout) by $holder" >&2; exit 1; fi; '
        f'[ -n "$waiting" ] || echo "gpufleet: waiting up to {lock_timeout}s for the dpkg '
        'lock, held by $holder"; waiting=1; sleep 2; done )'
    )


def transaction(steps: list[str], lock_timeout: int, log: str = TRANSACTION_LOG) -> str:
    """
    The shell steps of a package change, after `configure_pending`, run to their end whatever
    happens to the controller.

    Killing pyinfra (or losing its SSH connection) would otherwise kill apt halfway, between a
    held package's change and its hold. On systemd hosts the steps run as a transient unit that
    the controller only waits for; TRANSACTION_LOCK keeps them one at a time (a killed run's
    transaction finishes first). The output is printed, so a failure reads as if it ran in the
    foreground, and appended to ``log``.
    """
    script = " && ".join([configure_pending(lock_timeout), *steps])
    quoted_log, current = shlex.quote(log), shlex.quote(f"{log}.current")
    # Each transaction's output goes to its own file, then onto the log that keeps them all.
    logged = (
        f"{{ {script}; }} >{current} 2>&1; status=$?; cat {current} >>{quoted_log}; exit $status"
    )
    locked = f"flock {TRANSACTION_LOCK} /bin/sh -c {shlex.quote(logged)}"
    return (
        f"mkdir -p {shlex.quote(posixpath.dirname(log))} && "
        "if [ -d /run/systemd/system ]; then "
        # A unit name of its own: a finished unit may stay loaded for a moment after --wait.
        'systemd-run --quiet --wait --collect --unit="gpufleet-apt-$(date +%s%N)" '
        f"--description='gpufleet package change' {locked}; "
        f"else {locked}; fi; "
        f"status=$?; cat {current}; exit $status"
    )


def version_satisfied(state: DebPackageState | None, version_pattern: str | None) -> bool:
    if state is None or not state["installed"]:
        return False
    return version_pattern is None or fnmatchcase(state["version"], version_pattern)


def package_spec(name: str, version_pattern: str | None) -> str:
    return shlex.quote(name if version_pattern is None else f"{name}={version_pattern}")


def pin_moves(packages: dict[str, str | None]) -> str:
    """
    How the pins move the installed packages, for an operation's name while planning (a dry run
    shows it): ": 8.1.1.33 -> 8.1.0.77 (downgrade)", or "" when nothing installed moves.
    """
    states = snapshot.current(DebPackageStates, packages=sorted(packages))
    moves = sorted(
        {
            version_move(upstream_version(state["version"]), pattern_upstream(pattern))
            for name, pattern in packages.items()
            if pattern is not None
            and (state := states.get(name)) is not None
            and state["installed"]
            and not fnmatchcase(state["version"], pattern)
        }
    )
    return f": {', '.join(moves)}" if moves else ""


@operation()
def pinned_packages(packages: dict[str, str | None], lock_timeout: int, hold: bool = True):
    """
    Install packages at pinned versions and (optionally) hold them.

    + packages: name -> apt version pattern (e.g. ``470.182.03-*``, matched like apt matches it),
      or None for any version
    + lock_timeout: seconds to wait for another process's dpkg/apt lock
    + hold: apt-mark hold the packages so unattended upgrades cannot move them

    Held packages are changed with --allow-change-held-packages and held again in the same
    transaction, which runs to its end even when the controller is killed: an interrupted run
    leaves each package on its old or its new version, held.
    """
    states = snapshot.current(DebPackageStates, packages=sorted(packages))
    to_install = [
        name
        for name, pattern in packages.items()
        if not version_satisfied(states.get(name), pattern)
    ]
    to_hold = [
        name for name in packages if hold and (name in to_install or not states[name]["held"])
    ]
    if not to_install and not to_hold:
        host.noop(f"{len(packages)} package(s) already at their pinned versions")
        return

    hold_steps = (
        ["apt-mark hold " + " ".join(shlex.quote(name) for name in to_hold)] if to_hold else []
    )
    if not to_install:
        yield from hold_steps
        return
    specs = " ".join(package_spec(name, packages[name]) for name in to_install)
    yield transaction(
        [
            f"{apt_get(lock_timeout)} update",
            f"{apt_get(lock_timeout)} install --no-install-recommends --allow-downgrades"
            f" --allow-change-held-packages {specs}",
            *hold_steps,
        ],
        lock_timeout,
    )
