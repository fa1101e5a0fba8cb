"""Fixtures for bundle tests: tiny generated CT data, a throwaway copy of a bundle, and the monai.bundle CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from tools.bundle_command import bundle_command
from tools.synthetic_ct import generate_synthetic_ct

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"  # Model Zoo metadata schema, kept here for offline checks
TINY_OVERRIDES = ["--patch_size", "[32,32,16]", "--num_workers", "0", "--batch_size", "1", "--patches_per_volume", "1"]
# training under torchrun with two CPU processes: the bundle's multi-GPU overlay, then gloo instead of NCCL
TORCHRUN_CONFIGS = ["configs/train.json", "configs/multi_gpu_train.json", str(REPO / "tests/bundle/cpu_gloo.json")]


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


def run_cli(command: Sequence[str], cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` (a ``monai.bundle`` call from :func:`tools.bundle_command.bundle_command`, or any other) in a
    fresh process; on failure show its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [str(arg) for arg in command]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def training_case_recorder(folder: Path) -> Path:
    """An overlay config, to merge last, with which every process of a training run appends a line ``<epoch> <image
    file name>`` to ``folder/rank<rank>.txt`` for each item its training data loader loads (read them back with
    :func:`training_cases_seen`). It wraps the training dataset's ``_transform``, which ``__getitem__`` calls."""
    folder.mkdir(parents=True, exist_ok=True)
    rank = "(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)"
    record = (
        "$setattr(@train#dataset, '_transform', (lambda load, dataset, trainer, log: lambda index: (log.write("
        "f\"{trainer.state.epoch} {str(dataset.data[index]['image']).rsplit('/', 1)[-1]}\\n\"), log.flush(), "
        "load(index))[-1])(@train#dataset._transform, @train#dataset, @train#trainer, "
        f"open(@record_cases_to + f'/rank{{{rank}}}.txt', 'a')))"
    )
    overlay = folder / "record_training_cases.json"
    overlay.write_text(json.dumps({"record_cases_to": str(folder), "+initialize": [record]}, indent=4))
    return overlay


def training_cases_seen(folder: Path) -> dict[int, dict[int, list[str]]]:
    """What :func:`training_case_recorder` wrote: rank -> epoch -> the image file names loaded, in order."""
    seen: dict[int, dict[int, list[str]]] = {}
    for path in sorted(folder.glob("rank*.txt")):
        epochs = seen.setdefault(int(path.stem.removeprefix("rank")), {})
        for line in path.read_text().splitlines():
            epoch, name = line.split(" ", 1)
            epochs.setdefault(int(epoch), []).append(name)
    return seen


def assert_two_ranks_trained_on_disjoint_halves(
    folder: Path, cases: Sequence[str], epochs: int, replacement: bool = False
) -> None:
    """Each of ``epochs`` epochs, each of the two processes loaded half of the training ``cases`` (rounded up) and
    none that the other loaded; without ``replacement`` (a shuffling DistributedSampler) each case once, so
    that the two halves together are all the cases. Whole-data training on each process fails all of these."""
    seen = training_cases_seen(folder)
    assert sorted(seen) == [0, 1], f"records of ranks {sorted(seen)}"
    half = -(-len(cases) // 2)
    for epoch in range(1, epochs + 1):
        first, second = (seen[rank].get(epoch, []) for rank in (0, 1))
        assert len(first) == len(second) == half, f"epoch {epoch}: rank 0 loaded {first}, rank 1 {second}"
        assert not set(first) & set(second), f"epoch {epoch}: both ranks loaded {sorted(set(first) & set(second))}"
        assert set(first) | set(second) <= set(cases)
        if not replacement:
            assert sorted(first + second) == sorted(cases), f"epoch {epoch}: rank 0 {first}, rank 1 {second}"
    assert all(sorted(by_epoch) == list(range(1, epochs + 1)) for by_epoch in seen.values()), seen


def check_torchscript_export(
    bundle: Path, tmp_path: Path, sample_shape: tuple = (1, 1, 32, 32, 16), methods: tuple = ()
) -> str:
    """Export ``models/model.pt`` with ``ckpt_export``, load it with ``torch.jit.load`` in a process where neither
    ``common`` nor ``monai`` can be imported, and compare with the eager network on a ``sample_shape`` input; the
    loaded model must also have the exported ``methods``. Returns that process's report."""
    exported = tmp_path / "model.ts"
    run_cli(
        bundle_command(
            "configs/inference.json", workflow="ckpt_export", positional=["network_def"], bundle_root=".",
            meta_file="configs/metadata.json", overrides={"filepath": exported, "ckpt_file": "models/model.pt"},
        ),
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
    return run_cli([sys.executable, "-c", script], cwd=tmp_path).stdout.strip()


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
        bundle_command(
            None, workflow="verify_metadata", meta_file="configs/metadata.json",
            overrides=["--filepath", str(SCHEMAS / schema), "--hash_val", "662135097106b71067cd1fc657f8720f"],
        ),
        cwd=bundle,
    )  # fmt: skip
    run_cli(
        bundle_command(
            "configs/inference.json", workflow="verify_net_in_out", positional=["network_def"], bundle_root=".",
            meta_file="configs/metadata.json", overrides={"device": "cpu"},
        ),
        cwd=bundle,
    )  # fmt: skip
