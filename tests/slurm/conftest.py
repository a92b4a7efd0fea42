"""Tests against a real Slurm: `slurm/cluster-start.sh` starts a single-node cluster; `.ci/run` does it for CI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "slurm" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> None:
    """Fail (not skip) without a cluster: these tests were asked for with `-m slurm`."""
    if shutil.which("sbatch") is None:
        pytest.fail("no Slurm commands on PATH: start the local cluster with `sudo slurm/cluster-start.sh`")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"slurmctld does not answer ({ping.stdout.strip()} {ping.stderr.strip()}): "
                    "start it with `sudo slurm/cluster-start.sh`")
