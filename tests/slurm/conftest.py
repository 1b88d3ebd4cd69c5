"""The local SLURM cluster the tests in this folder submit to, started once per session."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers.slurm import LocalSlurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed: these tests need Debian's slurm-wlm and munge "
                    "(.ci/run installs them)")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()
