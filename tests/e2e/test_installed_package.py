"""
gpufleet installed from the checkout into a fresh virtualenv and used from another folder, as a
user's project uses it: one import name, a `gpufleet` command, pyinfra finding its deploys and
facts by import path, and a user's own `deploys/` folder untouched by it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.fleet import REPO_ROOT

# A user's project with a deploys/ folder of its own, one module importing another.
USER_COMMON = 'SITE = "web"\n'
USER_DEPLOY = (
    "from deploys.common import SITE\n"
    "from gpufleet import gpu_host\n"
    "\n"
    "print(f'deploying {SITE} with gpufleet')\n"
    "gpu_host()\n"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with gpufleet installed from the checkout (not editable)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(REPO_ROOT)],
        check=True,
        cwd=venv,
        timeout=900,
    )
    return venv


def run(venv: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_one_import_name_and_its_package_data(installed: Path, tmp_path: Path) -> None:
    (site_packages,) = installed.glob("lib/python3*/site-packages")
    assert (site_packages / "gpufleet" / "py.typed").is_file()
    assert (site_packages / "gpufleet" / "remote" / "tf_smoke_test.py").is_file()
    assert (site_packages / "gpufleet" / "templates" / "fleet-report.html.j2").is_file()
    assert not (site_packages / "deploys").exists()
    assert not (site_packages / "facts").exists()
    imported = run(
        installed,
        tmp_path,
        "python",
        "-c",
        "import gpufleet, gpufleet.facts.verify as v; from gpufleet import gpu_host; "
        "print(gpufleet.__file__); print(gpu_host.__module__); "
        "print('smoke test', len(v.SMOKE_TEST_SCRIPT.read_text()) > 0)",
    )
    assert imported.returncode == 0, imported.stderr
    location, module, smoke_test = imported.stdout.splitlines()
    assert location.startswith(str(site_packages))
    assert module == "gpufleet.deploys.gpu_host"
    assert smoke_test == "smoke test True"


def test_the_gpufleet_command_answers_help_for_each_subcommand(
    installed: Path, tmp_path: Path
) -> None:
    for subcommand in ([], ["rollout"], ["report"]):
        result = run(installed, tmp_path, "gpufleet", *subcommand, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Usage: gpufleet")
    missing = run(installed, tmp_path, "gpufleet", "rollout", str(tmp_path / "absent.py"))
    assert missing.returncode == 2
    assert "rollout: cannot read inventory" in missing.stderr


def test_a_users_own_deploys_folder_and_gpufleets_deploys_by_import_path(
    installed: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "deploys").mkdir(parents=True)
    (project / "deploys" / "common.py").write_text(USER_COMMON)
    (project / "deploys" / "web.py").write_text(USER_DEPLOY)
    # This machine as the host, planned only (--dry): gpufleet reads it and, on a Debian 12
    # machine (CI's) without a CUDA 11.2 mirror, refuses it before any operation.
    for deploy in ("deploys/web.py", "gpufleet.gpu_host"):
        planned = run(installed, project, "pyinfra", "--dry", "@local", deploy)
        output = planned.stdout + planned.stderr
        assert "ModuleNotFoundError" not in output and "Traceback" not in output, output
        assert "refusing to deploy, nothing was changed on the host" in output, output
    assert (
        "deploying web with gpufleet"
        in run(installed, project, "pyinfra", "--dry", "@local", "deploys/web.py").stdout
    )
    fact = run(
        installed, project, "pyinfra", "@local", "fact", "gpufleet.facts.gpu_host.Python3Version"
    )
    assert fact.returncode == 0, fact.stderr
    # pyinfra prints {"@local": <the fact's value>} on stderr: this machine's python3.
    assert '"@local": "3.' in fact.stderr, fact.stderr
