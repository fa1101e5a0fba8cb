"""Each bundle names the method package it needs in metadata.json, and its configs use only that package and
the shared primitives."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(path.name for path in (REPO / "bundles").iterdir() if (path / "configs" / "metadata.json").is_file())
SHARED = {"common.data", "common.transforms", "common.handlers", "common.errors", "common.settings"}
METHODS = {"common.smile", "common.sli2vol", "common.xnet"}
REFERENCE = re.compile(r"\bcommon\.\w+")


def _referenced_packages(bundle: str) -> set[str]:
    configs = (REPO / "bundles" / bundle / "configs").glob("*.json")
    return {match for path in configs for match in REFERENCE.findall(path.read_text()) if path.name != "metadata.json"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_names_the_method_package_and_the_distribution(bundle):
    metadata = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    assert metadata.get("method_package") in METHODS
    version = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert metadata["required_packages_version"].get("annotation-efficient-bundles") == version


@pytest.mark.parametrize("bundle", BUNDLES)
def test_configs_use_their_method_package_and_shared_primitives_only(bundle):
    metadata = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    used = _referenced_packages(bundle)
    assert metadata["method_package"] in used, f"{bundle}'s configs never use {metadata['method_package']}"
    assert used <= SHARED | {metadata["method_package"]}, f"{bundle} reaches into {used - SHARED}"
