"""Every bundle config is formatted as the Model Zoo's pre-commit hooks require (pretty-format-json --no-sort-keys
--indent=4, end-of-file-fixer, trailing-whitespace), so that a bundle copied into the zoo passes its checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.glob("bundles/*/configs/*.json"))


def test_every_bundle_has_configs():
    assert {path.parts[-3] for path in CONFIGS} >= {"smile", "smiler", "sli2vol", "xnet"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parts[-3]}/{path.name}")
def test_config_is_zoo_formatted(path):
    text = path.read_text()
    # what pretty-format-json writes: 4-space indentation, keys in their order, non-ASCII escaped, one final newline
    assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n", f"{path}: run the formatter"
    assert not any(line != line.rstrip() for line in text.splitlines()), f"{path}: trailing whitespace"
