"""The ``python -m monai.bundle`` command line, built in one place for the tests, the demo and the benchmarks.

    bundle_command(["configs/inference.json", "configs/evaluate.json"], bundle_root=".", overrides={"threshold": 0.4})
    -> [python, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/evaluate.json']",
        "--bundle_root", ".", "--threshold", "0.4"]

With ``launcher=torchrun(2)`` the same command runs under ``torch.distributed.run`` with two processes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["bundle_command", "config_file_arg", "override_args", "torchrun"]

PathLike = str | os.PathLike


def config_file_arg(config_files: PathLike | Sequence[PathLike]) -> str:
    """``--config_file``'s value: one path as it is, several as the list literal ``monai.bundle`` merges in order."""
    if isinstance(config_files, (str, os.PathLike)):
        return str(config_files)
    files = [str(path) for path in config_files]
    if not files:
        raise ValueError("bundle_command needs at least one config file")
    return files[0] if len(files) == 1 else "[" + ",".join(f"'{path}'" for path in files) + "]"


def _value(value: object) -> str:
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))  # numbers, lists and dicts as the CLI parses them


def override_args(overrides: Mapping[str, object] | Sequence[str]) -> list[str]:
    """``--id value`` pairs from a mapping (values as the CLI reads them), or a list of arguments passed as is."""
    if isinstance(overrides, Mapping):
        return [item for key, value in overrides.items() for item in (f"--{key}", _value(value))]
    return [str(item) for item in overrides]


def torchrun(nproc_per_node: int = 2, python: str = sys.executable) -> list[str]:
    """The launcher for one machine with ``nproc_per_node`` processes (``torch.distributed.run --standalone``)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={nproc_per_node}"]


def bundle_command(
    config_files: PathLike | Sequence[PathLike] | None,
    *,
    workflow: str = "run",
    positional: Sequence[str] = (),
    bundle_root: PathLike | None = None,
    meta_file: PathLike | None = None,
    logging_file: PathLike | None = None,
    overrides: Mapping[str, object] | Sequence[str] = (),
    python: str = sys.executable,
    launcher: Sequence[str] = (),
) -> list[str]:
    """The argument list of one ``monai.bundle`` call.

    Args:
        config_files: one config file or several, merged in order (later files override earlier ones); None for
            a workflow that reads none (``verify_metadata``).
        workflow: ``run``, ``ckpt_export``, ``verify_metadata``, ``verify_net_in_out``, ...
        positional: arguments right after the workflow name (``ckpt_export``'s ``network_def``).
        bundle_root, meta_file, logging_file: passed when given.
        overrides: more ``--id value`` arguments, as a mapping or an argument list.
        python: the interpreter, when no ``launcher`` is given.
        launcher: a command that runs a module, e.g. :func:`torchrun`; it replaces ``python``.
    """
    command = [*launcher] if launcher else [python]
    command += ["-m", "monai.bundle", workflow, *positional]
    if config_files is not None:
        command += ["--config_file", config_file_arg(config_files)]
    for name, value in (("bundle_root", bundle_root), ("meta_file", meta_file), ("logging_file", logging_file)):
        if value is not None:
            command += [f"--{name}", str(value)]
    return command + override_args(overrides)
