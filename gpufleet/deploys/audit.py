"""
What is the fleet running right now? The verification checks on every host, with no change made
(read-only facts and the smoke test container), then a fleet report with drift highlighted.

    pyinfra inventories/<fleet>.py deploys/audit.py

Broken hosts are reported, not failed: every host gets its result file in ``gpu_results_dir``,
and the report (fleet-report.md and fleet-report.html beside them) covers the whole folder. With
``tensorflow_host_test`` the host test runs where its virtualenv already exists.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import deploy, operation

from gpufleet import fleet_report
from gpufleet.deploys.verify import expectations_for, verify_host
from gpufleet.diagnosis import Expectations
from gpufleet.preflight import planned_driver_version, settings_or_refusal
from gpufleet.settings import DATA_DEFAULTS

REPORT_NAME = "fleet-report"


@operation()
def fleet_report_written(results_dir: str, pins: Expectations):
    """
    Write the fleet report of every result file in ``results_dir`` (run it once, after verify).

    + results_dir: folder of the per-host result JSON files, on the controller
    + pins: the versions the fleet is pinned to; others are drift
    """
    folder = Path(results_dir)
    if not state.is_executing:
        host.noop(f"would write {folder / REPORT_NAME}.md and .html")
        return
    rows = fleet_report.load_rows(folder, pins)
    (folder / f"{REPORT_NAME}.md").write_text(
        fleet_report.render_markdown(rows, pins), encoding="utf-8"
    )
    (folder / f"{REPORT_NAME}.html").write_text(
        fleet_report.render_html(rows, pins), encoding="utf-8"
    )
    logger.info(f"{fleet_report.totals_text(rows)}: {folder / REPORT_NAME}.md, .html")
    yield from ()


@deploy("Audit GPU host", data_defaults=DATA_DEFAULTS)
def audit() -> None:
    settings = settings_or_refusal(host.data)
    if settings is None:
        return
    driver_version = planned_driver_version(settings)
    if driver_version is None:
        return
    verify_host(
        settings=settings,
        driver_version=driver_version,
        smoke_test=settings.gpu_smoke_test,
        fail_broken=False,
        install_host_test=False,
    )
    fleet_report_written(
        name="Fleet report",
        results_dir=settings.gpu_results_dir,
        pins=expectations_for(settings, driver_version),
        _run_once=True,
    )
