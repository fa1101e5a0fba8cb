"""`make demo` end to end, shrunk: every step of scripts/demo.py through the real CLI, outputs checked."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_every_step_and_reports_dice(tmp_path):
    work = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/demo.py",
            "--work_dir",
            str(work),
            "--num_cases",
            "5",
            "--epochs",
            "1",
            "--smiler_rounds",
            "1",
            "--round_epochs",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for organ in ("liver", "pancreas", "stomach", "mean"):
        assert f"  {organ}" in result.stdout
    assert "SMILEr pseudo-labels per round" in result.stdout
    assert (work / "models" / "model.pt").is_file() and (work / "models" / "model.ts").is_file()
    assert (work / "smiler_models" / "model.pt").is_file()
    assert (work / "smiler" / "round_1" / "pseudo_labels.json").is_file()
    assert len(list((work / "predictions").glob("*_seg.nii.gz"))) == 1
    assert "XNet on 10 generated radiographs (shipped weights): macro F1" in result.stdout
    assert (work / "xnet" / "reliability_diagram.png").is_file()
    assert not list(work.rglob(".partial-*"))
