"""Shared fixtures: the local SLURM cluster of scripts/slurm-local.sh for the ``slurm``-marked tests.

``make test`` starts that cluster before pytest and stops it after, where it can (root; see the Makefile);
elsewhere the ``slurm`` tests skip and say how to enable them. Under CI (``CI=true``) a skipped ``slurm``
test is a failure: CI must exercise the executor on a real scheduler, not silently pass without one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: Where scripts/slurm-local.sh keeps its cluster (the same default and variable as the script).
SLURM_DIR = Path(os.environ.get("CAMRI_SLURM_DIR", "/var/lib/camri-slurm"))
ENABLE = (
    "start the one-node cluster with `sudo scripts/slurm-local.sh up` (`make test` does that itself "
    "when run as root, unless CAMRI_SLURM=0); docs/scale-out.md"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def slurm_cluster():
    """The SLURM_CONF of the running local cluster, set in the environment for the session (submitit's
    sbatch, sacct and scontrol, and the jobs, which inherit it). Skips when the cluster is not up."""
    conf = SLURM_DIR / "etc" / "slurm.conf"
    if not conf.is_file():
        pytest.skip(f"no local SLURM cluster ({conf} missing): {ENABLE}")
    missing = [c for c in ("sbatch", "sacct", "scontrol", "srun", "sinfo") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"SLURM's commands are not installed ({', '.join(missing)}): {ENABLE}")
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20
        ).stdout.split()
    except subprocess.TimeoutExpired:
        state = []
    if not any(s in ("idle", "mixed", "allocated", "completing") for s in state):
        pytest.skip(f"the local SLURM cluster is not up (sinfo: {' '.join(state) or 'no answer'}): {ENABLE}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(conf))
        yield conf


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and item.get_closest_marker("slurm") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a slurm test may not skip. {reason}"
