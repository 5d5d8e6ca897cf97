"""
The `gpufleet` command: the fleet-level tools that are not a single pyinfra deploy.

    gpufleet rollout INVENTORY [--batch-size N] [--dry] [-- PYINFRA_ARGS...]
    gpufleet report RESULTS_DIR --driver V --cuda V --cudnn V [--html F] [--markdown F]
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gpufleet import fleet_report, rollout
from gpufleet.diagnosis import Expectations


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Provision and check NVIDIA GPU hosts with pyinfra."""


@main.command(
    "rollout",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
)
@click.argument("inventory")
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Hosts per batch (upgrade_batch_size)."
)
@click.option("--dry", is_flag=True, help="List each host's plan and change nothing.")
@click.argument("pyinfra_args", nargs=-1, type=click.UNPROCESSED)
def rollout_command(
    inventory: str, batch_size: int | None, dry: bool, pyinfra_args: tuple[str, ...]
) -> None:
    """
    Change the NVIDIA driver of INVENTORY's hosts one batch at a time, stopping after the first
    batch in which a host failed. Options for pyinfra follow `--`.

    Exit status: 0 all done, 1 a host failed, 2 the inventory cannot be rolled out.
    """
    try:
        if dry:
            sys.exit(rollout.dry_run(inventory, list(pyinfra_args)))
        result = rollout.roll_out(inventory, batch_size, list(pyinfra_args))
    except rollout.RolloutError as error:
        click.echo(f"rollout: {error}", err=True)
        sys.exit(2)
    click.echo(result.report())
    sys.exit(1 if result.failed else 0)


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
    standard output unless --html or --markdown name files.
    """
    # Hosts report cuDNN's header version (8.1.1 for the 8.1.1.33 pin).
    pins = Expectations(driver, cuda, cudnn)
    rows = fleet_report.load_rows(results_dir, pins)
    table = fleet_report.render_markdown(rows, pins)
    if html:
        html.write_text(fleet_report.render_html(rows, pins), encoding="utf-8")
    if markdown:
        markdown.write_text(table, encoding="utf-8")
    if not (html or markdown):
        click.echo(table, nl=False)
    click.echo(fleet_report.totals_text(rows), err=True)
