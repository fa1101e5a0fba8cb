"""Real radiographs for tests: RG1, the computed radiograph (CR, chest, MONOCHROME1, 1955 × 1841) of the PyPI
package ``pydicom-data`` 1.0.0 (:func:`tools.package_data.rg1_radiograph`); tests that need it are skipped when
it cannot be had.

The wheel is taken from ``work/cache/xray/`` of the repository when it is there, else downloaded into a temporary
folder (120 s at most). The package's RG3 files are held out for independent evaluation: never extract or read them.

Use::

    def test_something(tmp_path_factory):
        path = rg1_path(tmp_path_factory)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.package_data import PYDICOM_DATA, rg1_radiograph

__all__ = ["rg1_path"]

REPO_CACHE = Path(__file__).resolve().parents[1] / "work" / "cache" / "xray"
DOWNLOAD_TIMEOUT_S = 120


def rg1_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of RG1_UNCR.dcm; calls ``pytest.skip`` with the reason when it cannot be downloaded or verified."""
    cached = any(REPO_CACHE.glob(PYDICOM_DATA.pattern))
    folder = REPO_CACHE if cached else tmp_path_factory.mktemp("pydicom_data")
    try:
        return rg1_radiograph(folder, timeout=DOWNLOAD_TIMEOUT_S)
    except RuntimeError as error:
        pytest.skip(f"RG1_UNCR.dcm of pydicom-data is not available: {error}")
