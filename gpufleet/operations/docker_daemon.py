"""
Operations on docker's daemon.json: merge gpufleet's keys into it, and restart docker when the
running daemon differs from it (gpufleet.stack.daemon_json says what and why).
"""

from __future__ import annotations

import io
import posixpath
import shlex
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, QuoteString, StringCommand, operation
from pyinfra.api.operation import OperationMeta

from gpufleet.facts import snapshot
from gpufleet.facts.docker import MANAGED_KEYS_PATH, DockerDaemonConfig, DockerInfo
from gpufleet.facts.pyinfra_internals import changes_host
from gpufleet.stack.daemon_json import (
    DAEMON_JSON_PATH,
    daemon_config_problem,
    merge_daemon_config,
    render_daemon_config,
    render_managed_keys,
    running_daemon_difference,
)

DOCKER_SERVICE = "docker.service"


@operation()
def daemon_config(
    default_runtime: str | None,
    extra: dict[str, Any],
    path: str = DAEMON_JSON_PATH,
    managed_keys_path: str = MANAGED_KEYS_PATH,
):
    """
    Merge the nvidia runtime and settings into docker's daemon.json.

    + default_runtime: value for `default-runtime`, or None to leave it alone
    + extra: further daemon.json keys (they win over the file's; objects are merged)
    + path: the daemon.json path
    + managed_keys_path: where gpufleet records which keys of the file are its own

    The first rewrite of a user's file keeps a copy beside it (daemon.json.before-gpufleet);
    each rewrite keeps the file it replaces as daemon.json.gpufleet-previous until docker has
    restarted with the new one. Where the installed dockerd has `--validate`, it checks the new
    file before it replaces the old.
    """
    current = snapshot.current(DockerDaemonConfig, path=path, managed_keys_path=managed_keys_path)
    problem = daemon_config_problem(path, current["parse_error"])
    if problem:
        raise OperationError(problem)
    wanted = merge_daemon_config(
        current["config"] or {}, default_runtime, extra, current["managed_keys"]
    )
    if wanted.managed_keys != current["managed_keys"]:
        yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(managed_keys_path)))
        yield FileUploadCommand(
            io.BytesIO(render_managed_keys(wanted.managed_keys)),
            managed_keys_path,
            remote_temp_filename=host.get_temp_filename(managed_keys_path),
        )
    if current["exists"] and wanted.config == current["config"]:
        host.noop(f"{path} already has the nvidia runtime and gpufleet's settings")
        return
    new_path, previous_path = f"{path}.gpufleet-new", f"{path}.gpufleet-previous"
    quoted, new, previous = (shlex.quote(p) for p in (path, new_path, previous_path))
    backup = shlex.quote(f"{path}.before-gpufleet")
    yield StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(path)))
    yield FileUploadCommand(
        io.BytesIO(render_daemon_config(wanted.config)),
        new_path,
        remote_temp_filename=host.get_temp_filename(path),
    )
    yield (
        "if dockerd --help 2>&1 | grep -q -- --validate; then "
        f"dockerd --validate --config-file {new} || {{ rm -f {new}; exit 1; }}; fi"
    )
    if current["exists"]:
        yield f"cp -np {quoted} {backup} && cp -p {quoted} {previous}"
    else:
        # No file was like an empty one: restoring that after a failed restart is the same.
        yield f": > {previous}"
    yield f"mv -f {new} {quoted}"


@operation()
def restart_for_config(
    written: OperationMeta, path: str = DAEMON_JSON_PATH, unit: str = DOCKER_SERVICE
):
    """
    Restart docker when daemon.json was rewritten, or when the running daemon differs from the
    file (a run killed between the write and the restart): compared, not remembered.

    + written: the daemon_config operation of this run
    + path: the daemon.json path
    + unit: docker's systemd unit

    If docker does not come back, the file it replaced is restored and docker restarted with it,
    and the host fails with docker's own error.
    """
    rewritten = changes_host(written)
    reason = "daemon.json was rewritten" if rewritten else None
    if reason is None:
        current = snapshot.current(DockerDaemonConfig, path=path)
        reason = running_daemon_difference(current["config"] or {}, snapshot.current(DockerInfo))
    if reason is None:
        host.noop("docker runs with its daemon.json")
        return
    quoted, previous, quoted_unit = (
        shlex.quote(path),
        shlex.quote(f"{path}.gpufleet-previous"),
        shlex.quote(unit),
    )
    yield (
        # reset-failed: quick restarts must not hit the unit's start rate limit.
        f"systemctl reset-failed {quoted_unit}; "
        f"if systemctl restart {quoted_unit}; then rm -f {previous}; else "
        f"echo {shlex.quote(f'docker did not start ({reason}); its log:')} >&2; "
        f"journalctl -u {quoted_unit} -n 20 --no-pager -o cat >&2; "
        f"if [ -f {previous} ]; then mv -f {previous} {quoted}; "
        f"systemctl reset-failed {quoted_unit}; systemctl restart {quoted_unit} && "
        "echo 'the previous daemon.json was restored and docker runs with it' >&2; fi; "
        "exit 1; fi"
    )
