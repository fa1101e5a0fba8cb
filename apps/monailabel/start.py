"""Start the MONAI Label server of this app on 127.0.0.1; run it with the MONAI Label environment's python.

    .venv-label/bin/python apps/monailabel/start.py --studies /path/to/images [--port 8000] [--conf name value]

It serves the folder of images (NIfTI, NRRD, MHA, DICOM, PNG, JPEG, TIFF files, as listed in
``common.data.file_types``; subfolders are not scanned) and only listens on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

from common.data.file_types import ALL_IMAGE_SUFFIXES

APP_DIR = Path(__file__).resolve().parent
# .mhd is left out: its pixels are in a second file that the datastore would not serve with it
IMAGE_PATTERNS = [f"*{suffix}" for suffix in ALL_IMAGE_SUFFIXES if suffix != ".mhd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", required=True, help="folder of images to annotate (MONAI Label's datastore)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="app option")
    args = parser.parse_args()
    studies = Path(args.studies).resolve()
    if not studies.is_dir():
        parser.error(f"--studies {studies}: no such folder")
    os.environ.setdefault("MONAI_LABEL_DATASTORE_FILE_EXT", json.dumps(IMAGE_PATTERNS))
    options = [item for name, value in args.conf for item in ("--conf", name, value)]
    sys.argv = ["monailabel", "start_server", "--app", str(APP_DIR), "--studies", str(studies)]
    sys.argv += ["--host", "127.0.0.1", "--port", str(args.port), *options]
    runpy.run_module("monailabel.main", run_name="__main__")


if __name__ == "__main__":
    main()
