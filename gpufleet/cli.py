"""
The `gpufleet` command: the fleet-level tools that are not a single pyinfra deploy.

    gpufleet rollout INVENTORY [--driver-version V [--branch B]] [--batch-size N] [--dry]
                     [-- PYINFRA_ARGS...]
    gpufleet report RESULTS_DIR --driver V --cuda V --cudnn V [--html F] [--markdown F]
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from gpufleet import fleet_report, rollout
from gpufleet.diagnosis import Expectations
from gpufleet.stack import compat

# A release of the default branch, for the examples in the option errors.
EXAMPLE_DRIVER_VERSION = compat.DRIVER_RELEASES[compat.DEFAULT_DRIVER_BRANCH]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Provision and check NVIDIA GPU hosts with pyinfra."""


class ShapedText(click.ParamType):
    """A string option of ``pattern``'s shape: the check the inventory's data gets."""

    def __init__(self, pattern: re.Pattern[str], what: str, example: str) -> None:
        self.pattern, self.name, self.example = pattern, what, example

    def convert(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not self.pattern.fullmatch(value):
            self.fail(f"{value!r} is not a {self.name}; use e.g. {self.example!r}", param, ctx)
        return value


@main.command(
    "rollout",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
)
@click.argument("inventory")
@click.option(
    "--driver-version",
    metavar="VERSION",
    type=ShapedText(compat.DRIVER_VERSION, "driver version", EXAMPLE_DRIVER_VERSION),
    help=f"Roll out this driver (nvidia_driver_version), e.g. {EXAMPLE_DRIVER_VERSION}.",
)
@click.option(
    "--branch",
    metavar="BRANCH",
    type=ShapedText(compat.DRIVER_BRANCH, "driver branch", compat.DEFAULT_DRIVER_BRANCH),
    help="Its branch (nvidia_driver_branch), where the inventory pins another.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Hosts per batch (upgrade_batch_size)."
)
@click.option("--dry", is_flag=True, help="List the batches and each host's plan; change nothing.")
@click.option("--status", is_flag=True, help="Print the rollouts recorded beside INVENTORY.")
@click.argument("pyinfra_args", nargs=-1, type=click.UNPROCESSED)
def rollout_command(
    inventory: str,
    driver_version: str | None,
    branch: str | None,
    batch_size: int | None,
    dry: bool,
    status: bool,
    pyinfra_args: tuple[str, ...],
) -> None:
    """
    Change the NVIDIA driver of INVENTORY's hosts one batch at a time, under the inventory's
    rules (upgrade_max_unavailable, upgrade_max_failed, upgrade_skip; with gpu_scheduler: slurm,
    each node is drained and its jobs waited for). --driver-version overrides the inventory's
    pin for this rollout only. The state is kept in .gpufleet/ beside INVENTORY: the same
    command takes an interrupted rollout up again. Options for pyinfra follow `--`.

    Exit status: 0 all done, 1 a host failed (or its verification) or was not reached, 2 the
    inventory cannot be rolled out.
    """
    if branch is not None and driver_version is None:
        raise click.UsageError("--branch needs --driver-version: name the release to roll out")
    if status:
        click.echo(rollout.status_text(inventory))
        return
    override = rollout.DriverOverride(driver_version, branch) if driver_version else None
    try:
        if dry:
            sys.exit(rollout.dry_run(inventory, batch_size, list(pyinfra_args), override))
        result = rollout.roll_out(inventory, batch_size, list(pyinfra_args), override)
    except rollout.RolloutError as error:
        click.echo(f"rollout: {error}", err=True)
        sys.exit(2)
    click.echo(result.report())
    for warning in result.warnings:
        click.echo(warning, err=True)
    sys.exit(0 if result.succeeded else 1)


@main.command("report")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--driver", required=True, help="Pinned driver version, e.g. 470.182.03.")
@click.option("--cuda", required=True, help="Pinned CUDA version, e.g. 11.2.")
@click.option("--cudnn", required=True, help="Pinned cuDNN version, e.g. 8.1.1.33.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path), help="Write the page.")
@click.option(
    "--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the table."
)
def report_command(
    results_dir: Path,
    driver: str,
    cuda: str,
    cudnn: str,
    html: Path | None,
    markdown: Path | None,
) -> None:
    """
    The fleet report of a folder of per-host verification results (RESULTS_DIR): Markdown on
    standard output unless --html or --markdown name files. The page links each host to its
    result file by a path relative to the page, so keep them where they are, or move them
    together.
    """
    # Hosts report cuDNN's header version (8.1.1 for the 8.1.1.33 pin).
    pins = Expectations(driver, cuda, cudnn)
    rows = fleet_report.load_rows(results_dir, pins)
    generated_at = datetime.now(timezone.utc)
    table = fleet_report.render_markdown(rows, pins, generated_at)
    if html:
        page = fleet_report.render_html(
            rows, pins, generated_at, fleet_report.results_link_prefix(results_dir, html)
        )
        html.write_text(page, encoding="utf-8")
    if markdown:
        markdown.write_text(table, encoding="utf-8")
    if not (html or markdown):
        click.echo(table, nl=False)
    click.echo(fleet_report.totals_text(rows), err=True)
