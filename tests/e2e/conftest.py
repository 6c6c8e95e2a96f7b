import shutil
import tempfile

import pytest


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real two-node SLURM cluster (tests/slurm_cluster.py): hosts node1 (slurmctld + slurmd) and node2
    (slurmd) in network namespaces, 2 CPUs and 2 dummy GPUs each; one for the session (the SLURM modules share it:
    every test waits for its own jobs to end), torn down after it. Skipped with the reason without root, network
    namespaces, or SLURM (installed with apt-get if missing); a skip fails CI (tests/conftest.py)."""
    from tests.slurm_cluster import slurm_unavailable, start_cluster

    why = slurm_unavailable()
    if why:
        pytest.skip(why)
    state = tempfile.mkdtemp(prefix="btsc-", dir="/tmp")  # short: munge's socket lives below it
    try:
        with start_cluster(state) as cluster:
            yield cluster
    finally:
        shutil.rmtree(state, ignore_errors=True)
