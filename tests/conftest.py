"""Shared fixtures.

Real data lives in ``../shared/data`` beside the checkout (override with the
``DSBPREP_SHARED_DATA`` environment variable). A fresh clone without it skips
the tests that need it, with the reason; under ``CI=true`` a missing folder is
a failure, because CI always has the data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DSBPREP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(relative: str) -> Path:
    """Return ``SHARED_DATA / relative``, skipping (or failing under CI) when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        msg = (
            f"shared test data {path} is missing (tests read real DICOM from ../shared/data; "
            "set DSBPREP_SHARED_DATA to point elsewhere)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def lidc_dir() -> Path:
    """The LIDC-IDRI-0001 patient folder (nested patient/study/series layout)."""
    return shared_path("lidc-idri/LIDC-IDRI-0001")


@pytest.fixture(scope="session")
def ct64_dir() -> Path:
    """The 79-slice, 64x64 real chest CT series of cip-lung-nrrd."""
    return shared_path("cip-lung-nrrd/Testing/Data/Input/ct-64Dicom")


@pytest.fixture(scope="session")
def cip_dir() -> Path:
    """The cip-lung-nrrd folder root."""
    return shared_path("cip-lung-nrrd")


@pytest.fixture(scope="session")
def siim_dir() -> Path:
    """The SIIM-ACR pneumothorax sample (JPEG-compressed chest X-rays + RLE CSV)."""
    return shared_path("siim-acr-sample")


@pytest.fixture(scope="session")
def sunnybrook_dir() -> Path:
    """Sunnybrook cardiac MR with contour files (``final_data``)."""
    return shared_path("sunnybrook/final_data")


@pytest.fixture(scope="session")
def reference_npz() -> Path:
    """grt123's own outputs for LIDC-IDRI-0001."""
    return shared_path("reference/grt123-LIDC-IDRI-0001.npz")


@pytest.fixture(scope="session")
def luna16_annotations() -> Path:
    """LUNA16's annotations.csv (1,186 nodules of 888 LIDC-IDRI series)."""
    return shared_path("reference/luna16/annotations.csv")
