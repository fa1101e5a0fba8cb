"""Real radiographs for tests: RG1, the computed radiograph (CR, chest, MONOCHROME1, 1955 × 1841) of the PyPI
package ``pydicom-data`` 1.0.0, found or fetched on demand; tests that need it are skipped when it cannot be had.

Where the file comes from, in order: ``work/cache/xray/data_store/data/RG1_UNCR.dcm`` in the repository; the wheel
named by the environment variable ``PYDICOM_DATA_WHEEL``, or ``work/cache/xray/pydicom_data-1.0.0-py3-none-any.whl``;
else ``pip download pydicom-data==1.0.0 --no-deps`` into the cache folder (120 s at most). Only
``data_store/data/RG1_UNCR.dcm`` is taken from the wheel, and its SHA-256 is checked. The package's RG3 files are
held out for independent evaluation: never extract or read them here.

Use::

    @pytest.fixture(scope="session")
    def rg1(tmp_path_factory):
        return rg1_path(tmp_path_factory)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

__all__ = ["RG1_MEMBER", "RG1_SHA256", "rg1_path"]

REPO = Path(__file__).resolve().parents[1]
REPO_CACHE = REPO / "work" / "cache" / "xray"
WHEEL_NAME = "pydicom_data-1.0.0-py3-none-any.whl"
RG1_MEMBER = "data_store/data/RG1_UNCR.dcm"
RG1_SHA256 = "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498"
DOWNLOAD_TIMEOUT_S = 120


def rg1_path(cache: pytest.TempPathFactory | os.PathLike | str) -> Path:
    """The path of RG1_UNCR.dcm, extracted into `cache` (a folder, or a pytest tmp_path_factory) when needed.

    Calls ``pytest.skip`` naming what was tried when the file cannot be found, downloaded or verified.
    """
    cached = REPO_CACHE / RG1_MEMBER
    if cached.is_file() and _sha256(cached) == RG1_SHA256:
        return cached
    folder = cache.mktemp("pydicom_data") if isinstance(cache, pytest.TempPathFactory) else Path(cache)
    wheel = _find_wheel() or _download_wheel(folder)
    target = folder / RG1_MEMBER
    if not target.is_file():
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(RG1_MEMBER, folder)
    if _sha256(target) != RG1_SHA256:
        pytest.skip(f"{target} is not the expected RG1_UNCR.dcm of pydicom-data 1.0.0 (SHA-256 differs)")
    return target


def _find_wheel() -> Path | None:
    """The pydicom-data wheel named by ``PYDICOM_DATA_WHEEL``, else the one in the repository's cache, else None."""
    for candidate in (os.environ.get("PYDICOM_DATA_WHEEL"), REPO_CACHE / WHEEL_NAME):
        if candidate and _holds_rg1(Path(candidate)):
            return Path(candidate)
    return None


def _holds_rg1(wheel: Path) -> bool:
    """Whether `wheel` is a zip archive with RG1_UNCR.dcm in it."""
    if not zipfile.is_zipfile(wheel):
        return False
    with zipfile.ZipFile(wheel) as archive:
        return RG1_MEMBER in archive.namelist()


def _download_wheel(folder: Path) -> Path:
    """``pip download`` the wheel into `folder`; skips the calling test when that fails or times out."""
    command = [sys.executable, "-m", "pip", "download", "pydicom-data==1.0.0", "--no-deps", "--only-binary=:all:"]
    try:
        subprocess.run([*command, "-d", str(folder)], capture_output=True, timeout=DOWNLOAD_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(
            f"RG1_UNCR.dcm of pydicom-data is not available: no {WHEEL_NAME} in $PYDICOM_DATA_WHEEL or {REPO_CACHE}, "
            f"and pip download failed ({type(error).__name__}); set PYDICOM_DATA_WHEEL to a downloaded wheel"
        )
    return folder / WHEEL_NAME


def _sha256(path: Path) -> str:
    """The hex SHA-256 of the file at `path`."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
