"""The package-level import graph of ``common`` (and ``tools``), one edge per line, for docs/architecture.md.

    python -m tools.import_graph                  # this checkout
    python -m tools.import_graph --root /tmp/old  # another checkout (e.g. a git worktree of an older commit)

An edge ``common.smile -> common.data (9)`` says that 9 modules of ``common.smile`` import modules of
``common.data`` directly. ``lint-imports`` (``make test``) checks the rules; this only draws the graph.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import grimp

__all__ = ["package_edges"]


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_edges(packages: list[str]) -> Counter:
    """{(importer package, imported package): number of direct module imports}, within ``packages``."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    edges: Counter = Counter()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            importer, target = _package(module), _package(imported)
            if importer != target and target not in packages:  # a package's own __init__ is not an edge
                edges[importer, target] += 1
    return edges


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="source checkout")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root.resolve()))
    packages = [name for name in ("common", "tools") if (args.root / name / "__init__.py").is_file()]
    for (importer, target), count in sorted(package_edges(packages).items()):
        print(f"{importer} -> {target} ({count})")


if __name__ == "__main__":
    main()
