"""
Checks of the arguments gpufleet's facts take. pyinfra's fact CLI passes ``packages=bash`` as the
string "bash" (only JSON such as ``packages='["bash"]'`` becomes a list), and a fact iterating a
string would ask about "b", "a", "s", "h" and answer an empty result that looks like a real one.
"""

from __future__ import annotations

import json
import shlex

from pyinfra.api import FactBase


def require_lists(fact: FactBase, **arguments: object) -> None:
    """
    Refuse a string passed for any of ``arguments``, naming it and the CLI's list syntax. A plain
    TypeError, like the plain ValueErrors of pyinfra's own facts: its fact CLI drops a
    FactTypeError (any PyinfraError) and exits 0 with no data (pyinfra_cli/cli.py,
    ``_run_fact_operations``).
    """
    for name, value in arguments.items():
        if isinstance(value, str):
            cli_argument = shlex.quote(f"{name}={json.dumps([value])}")
            raise TypeError(
                f"{fact.name}: {name} must be a list, not the string {value!r}; "
                f"on pyinfra's command line a list is JSON: {cli_argument}"
            )
