"""Fixtures for bundle tests: tiny generated CT data, a throwaway copy of a bundle, and the monai.bundle CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from common.data.synthetic_ct import generate_synthetic_ct

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"  # Model Zoo metadata schema, kept here for offline checks
TINY_OVERRIDES = ["--patch_size", "[32,32,16]", "--num_workers", "0", "--batch_size", "1", "--patches_per_volume", "1"]


@pytest.fixture(scope="session")
def tiny_ct(tmp_path_factory) -> Path:
    """Eight tiny synthetic CT cases (6 training, 2 validation, 2 test); returns the dataset folder."""
    folder = tmp_path_factory.mktemp("tiny_ct")
    generate_synthetic_ct(
        folder, num_cases=10, shape=(40, 40, 12), spacing=(2.0, 2.0, 3.0), num_validation=2, num_test=2
    )
    return folder


def copy_bundle(name: str, destination: Path) -> Path:
    """A copy of ``bundles/<name>`` so that runs never write into the repository."""
    target = destination / name
    shutil.copytree(REPO / "bundles" / name, target, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    return target


def patch_network_def(bundle: Path, configs: tuple[str, ...], **fields) -> Path:
    """Set ``fields`` of ``network_def`` in each of ``configs`` of a bundle copy (e.g. smaller widths)."""
    for config in configs:
        path = bundle / "configs" / config
        parsed = json.loads(path.read_text())
        parsed["network_def"].update(fields)
        path.write_text(json.dumps(parsed, indent=4))
    return bundle


def run_cli(*args: str, cwd: Path = REPO, module: str = "monai.bundle", check: bool = True, launcher=()):
    """Run ``python -m <module> <args>`` in a fresh process; on failure show its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [*launcher] if launcher else [sys.executable, "-m", module]
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command + list(args))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def check_torchscript_export(
    bundle: Path, tmp_path: Path, sample_shape: tuple = (1, 1, 32, 32, 16), methods: tuple = ()
) -> str:
    """Export ``models/model.pt`` with ``ckpt_export``, load it with ``torch.jit.load`` in a process where neither
    ``common`` nor ``monai`` can be imported, and compare with the eager network on a ``sample_shape`` input; the
    loaded model must also have the exported ``methods``. Returns that process's report."""
    exported = tmp_path / "model.ts"
    run_cli(
        "ckpt_export", "network_def", "--filepath", str(exported), "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", ".",
        cwd=bundle,
    )  # fmt: skip
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    sample = torch.rand(*sample_shape)
    with torch.no_grad():
        torch.save({"input": sample, "output": network(sample)}, tmp_path / "eager.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["common"] = None
        sys.modules["monai"] = None
        try:
            import common
        except ImportError:
            pass
        else:
            raise SystemExit("common must not be importable here")
        import torch
        model = torch.jit.load({str(exported)!r})
        eager = torch.load({str(tmp_path / "eager.pt")!r})
        with torch.no_grad():
            output = model(eager["input"])
        torch.testing.assert_close(output, eager["output"], rtol=1e-4, atol=1e-5)
        missing = [name for name in {list(methods)!r} if not hasattr(model, name)]
        assert not missing, f"exported model lacks {{missing}}"
        print("scripted output matches eager", tuple(output.shape))
        """
    )
    return run_cli("-c", script, launcher=(sys.executable,), cwd=tmp_path).stdout.strip()


def missing_workflow_properties(
    name: str, workflow_type: str, config: str, dataset: Path, tmp_path: Path, **overrides
) -> list:
    """The required properties that a copy of bundle ``name``'s ``config`` lacks as a ``workflow_type`` workflow
    (``overrides``: config ids set as on the command line)."""
    bundle = copy_bundle(name, tmp_path)
    workflow = ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=str(bundle / "configs" / config),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        dataset_dir=str(dataset),
        num_workers=0,
        **overrides,
    )
    workflow.initialize()
    return workflow.check_properties()


def verify_metadata_and_network(bundle: Path) -> None:
    """The Model Zoo's offline checks: metadata against the schema (md5-checked copy), network in/out contract."""
    schema = json.loads((bundle / "configs" / "metadata.json").read_text())["schema"].rsplit("/", 1)[-1]
    run_cli(
        "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMAS / schema),
        "--hash_val", "662135097106b71067cd1fc657f8720f", cwd=bundle,
    )  # fmt: skip
    run_cli(
        "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", "--bundle_root", ".", "--device", "cpu", cwd=bundle,
    )  # fmt: skip
