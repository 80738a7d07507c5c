"""The dask backend: per-case work on a real dask.distributed cluster, one writer here."""

from __future__ import annotations

import pytest

from dsbprep.build import run_build
from dsbprep.config import load_config
from dsbprep.sample import write_sample_cohort
from dsbprep.store import open_dataset

distributed = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dask_local_cluster_build_equals_local_build(tmp_path):
    data = tmp_path / "in"
    write_sample_cohort(data, n_patients=3, seed=5)
    (data / "broken").mkdir()
    (data / "broken" / "x.dcm").write_bytes(b"\0" * 300)
    cfg = load_config(None)
    local = run_build(cfg, data_directory=data, output_filename=tmp_path / "local.h5", workers=1, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        report = run_build(load_config(None), data_directory=data, output_filename=tmp_path / "dask.h5",
                           backend="dask", scheduler=cluster.scheduler_address, progress=False)
        with distributed.Client(cluster) as client:
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2
    assert sorted(report.built) == sorted(local.built) == ["SAMPLE-000", "SAMPLE-001", "SAMPLE-002"]
    assert set(report.failed) == {"broken"}
    with open_dataset(tmp_path / "local.h5") as a, open_dataset(tmp_path / "dask.h5") as b:
        assert sorted(a.case_ids) == sorted(b.case_ids)
        for cid in a.case_ids:
            assert a[cid].checksum == b[cid].checksum, cid
