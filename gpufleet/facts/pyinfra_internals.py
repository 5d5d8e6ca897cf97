"""
The pyinfra internals gpufleet reads, and only here: written against pyinfra 3.10 (pyproject.toml
pins ``pyinfra>=3.10,<3.11``). tests/unit/test_pyinfra_internals.py checks each on a real State
and fails naming the internal when an installed pyinfra no longer has it.

pyinfra offers no public way to ask whether an earlier operation of this run changed a host
(``OperationMeta.did_change`` is for the one operation a handler names), so gpufleet reads:

- ``State.ops[host]``: the host's ``StateOperationHostData`` by operation hash, each with its
  ``operation_meta``;
- ``Host.op_hash_order``: the host's own operation hashes in the order they run there (the run
  order, ``State.get_op_order()``, merges every host's; it is a topological sort of the whole
  fleet's operations, too costly to redo on each fact read);
- ``Host.current_op_hash``: the operation whose commands are being generated, None between them;
- ``OperationMeta.is_complete()`` and ``OperationMeta.executed``: the operation has run (failed
  or not) and ran at least one command; ``OperationMeta.will_change``: what a planned operation
  would do (a `--dry` run never completes it);
- ``sys.argv``: whether pyinfra's CLI runs the deploy, and whether with ``--dry``;
- ``OperationMeta._combined_output``: what a run operation printed (the run summary's causes).

And one of CPython's, for pyinfra's cost per operation (``register_deploy_file``):

- ``inspect.modulesbyfile``: inspect's cache of absolute file name -> module name.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

from pyinfra.api import Host, State
from pyinfra.api.operation import OperationMeta


def changed_before_current_operation(state: State, host: Host) -> bool:
    """
    Whether an operation ordered before the one running on ``host`` ran commands there. A failed
    operation counts: it may have changed the host before its failing command.
    """
    host_operations = state.ops[host]
    for op_hash in host.op_hash_order:
        if op_hash == host.current_op_hash:
            break
        operation = host_operations.get(op_hash)
        if operation is None:
            continue
        meta = operation.operation_meta
        if meta.is_complete() and meta.executed:
            return True
    return False


# What inspect.getmodule finds for a deploy file pyinfra execs: a name no module has, so it returns
# None, the answer its walk of sys.modules gives for such a file.
NOT_A_MODULE = "<a file pyinfra execs, not a module>"


def register_deploy_file(filename: str | None) -> None:
    """
    Tell inspect that ``filename``, a deploy file pyinfra's CLI execs, is no module's file: call it
    from the deploy file, before its operations, with its ``__file__`` (None does nothing).

    Why: in CLI mode pyinfra orders each operation of each host by the line numbers of its call
    stack: pyinfra/api/operation.py ``solve_operation_consistency`` calls
    pyinfra/api/util.py ``get_operation_order_from_stack``, which calls ``inspect.stack()`` and
    then ``inspect.getframeinfo`` on each frame twice more, all with context=1. CPython 3.11's
    inspect.py ``getframeinfo`` then calls ``findsource(frame)``, which calls
    ``getmodule(frame, file)``. For a module's file that is a lookup in ``modulesbyfile``. The
    deploy file is no module's: pyinfra_cli/util.py ``exec_file`` compiles and execs it under the
    name given on the command line. So ``getmodule`` misses the cache (the name and its absolute
    path), walks every module of ``sys.modules`` (ismodule and hasattr on each, about 900) and
    finds none (a frame has no ``__name__`` for its last checks); a miss is not cached, so this
    repeats 3 times for each operation call of each host: about 1 ms per call, 0.6-0.8 s of
    CPU in a 32-host no-op (bench/README.md, "Planning cost per host"). Every other frame of an
    operation's stack (gpufleet's, pyinfra's, gevent's greenlet) is a module's and hits the cache.

    Mapped to a name no module has, ``getmodule`` answers the same None from the cache. The
    frame's file name and line numbers, all pyinfra's order reads, do not depend on it
    (``getsourcefile`` returns an existing file's name before asking for its module), so the
    operation order and hashes are unchanged (tests/unit/test_pyinfra_internals.py). A file
    already known as a module's keeps its module.
    """
    if filename:
        # The key getmodule tries after the name as given: inspect.getabsfile's form.
        inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(filename)), NOT_A_MODULE)


def changes_host(operation: OperationMeta) -> bool:
    """Whether ``operation`` changed its host (once run) or would change it (while planned)."""
    return operation.did_change() if operation.is_complete() else operation.will_change


def dry_run() -> bool:
    """
    Whether pyinfra's CLI was started with ``--dry``: it plans every host, then stops before the
    run, and tells the deploy nothing (no State or Config attribute says so). Read from the
    command line, so work a dry run must not do (fetching gigabytes of artifacts) is skipped.
    """
    return "--dry" in sys.argv[1:]


def host_operations(state: State, host: Host) -> list[tuple[str, OperationMeta]]:
    """The host's operations in the order they run there: (name, meta)."""
    operations = []
    for op_hash in host.op_hash_order:
        operation = state.ops[host].get(op_hash)
        if operation is not None:
            name = ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash
            operations.append((name, operation.operation_meta))
    return operations


def operation_output(meta: object) -> list[str]:
    """The lines a run operation printed, stdout and stderr in order (none before it ran)."""
    output = getattr(meta, "_combined_output", None)
    return [line.line for line in output.combined_lines] if output is not None else []


def in_pyinfra_cli() -> bool:
    """Whether pyinfra's command line runs this process (`pyinfra ...`, `python -m pyinfra`),
    not a test or a program driving pyinfra's API."""
    program = Path(sys.argv[0])
    return program.name == "pyinfra" or program.parent.name in ("pyinfra", "pyinfra_cli")
