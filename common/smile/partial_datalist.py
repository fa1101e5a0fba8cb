"""Merge single-organ datasets in the MSD layout into one partially labelled datalist.

Each source dataset delineates a few organs with its own label values, e.g. Task03_Liver (1 liver, 2 tumour) and
Task09_Spleen (1 spleen). The merged datalist lists every case of every source with the target classes that its
source annotates (``annotated_classes``) and how its label values become target classes (``label_mapping``);
no label file is rewritten. Train with :class:`common.smile.RemapLabelsd` right after loading::

    python -m common.smile.partial_datalist --classes liver pancreas spleen \\
        --source /data/Task03_Liver/dataset.json 1=liver,2=liver \\
        --source /data/Task07_Pancreas/dataset.json 1=pancreas,2=pancreas \\
        --source /data/Task09_Spleen/dataset.json 1=spleen \\
        --output /data/combined/dataset.json --validation_fraction 0.1

:func:`site_datalist` simulates the same setting on one fully labelled dataset: each training case (each patient,
with all its frames) is assigned to one of K "sites", and site k annotates class k only::

    python -m common.smile.partial_datalist sites --datalist /data/acdc/datalist.json \\
        --num_foreground_classes 3 --output /data/acdc/sites.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.data.datalist import load_datalist
from common.data.json_io import write_json
from common.errors import InvalidInputError

__all__ = ["merge_datasets", "parse_mapping", "site_datalist"]


def merge_datasets(
    sources: Sequence[tuple[str | os.PathLike, Mapping[int, str]]],
    class_names: Sequence[str],
    output: str | os.PathLike,
    key: str = "training",
    validation_fraction: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write one MSD-style datalist holding the ``key`` section of every source, with per-case label mappings.

    Every entry becomes ``{"image", "label", "annotated_classes", "label_mapping"}``: ``annotated_classes``
    are the sorted target classes (1..K) that its source maps to, and ``label_mapping`` is
    ``{"<source value>": target class}``; source values left out of the mapping become background.
    Paths are relative to the output's folder (absolute where no relative path exists, e.g. another drive).

    Args:
        sources: (MSD dataset.json, {source label value: target class name}) per dataset.
        class_names: the K target foreground classes; class k is ``class_names[k - 1]``.
        output: the merged JSON file; its "labels" are ``{"0": "background", "1": class_names[0], ...}``.
        key: the section read from each source.
        validation_fraction: share of each source's cases moved to a "validation" section, in [0, 1); when
            positive, each source of two or more cases gives at least one and keeps at least one for training.
        seed: seed of the validation split, which depends only on it and the sources' order and content.

    Returns:
        the path written.

    Raises:
        InvalidInputError: naming the source dataset.json, for a missing or malformed source or file, a mapping
            naming an unknown class, an image listed twice, or an output that would overwrite a source.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be distinct, got {list(class_names)}")
    class_index = {name: index for index, name in enumerate(class_names, start=1)}
    output_path = Path(os.path.abspath(output))
    training, validation, image_sources = [], [], {}
    for number, (dataset_json, mapping) in enumerate(sources):
        if output_path == Path(os.path.abspath(dataset_json)):
            raise InvalidInputError(f"{dataset_json}: the output would overwrite this source datalist")
        label_mapping = _target_mapping(dataset_json, mapping, class_index)
        source_entries = load_datalist(dataset_json, key=key)
        entries = [_merged_entry(entry, label_mapping, output_path.parent) for entry in source_entries]
        for entry in entries:
            if entry["image"] in image_sources:
                first = image_sources[entry["image"]]
                raise InvalidInputError(f"{dataset_json}: image {entry['image']} is already listed by {first}")
            image_sources[entry["image"]] = dataset_json
        held_out = _validation_indices(len(entries), validation_fraction, np.random.default_rng([seed, number]))
        training += [entry for index, entry in enumerate(entries) if index not in held_out]
        validation += [entry for index, entry in enumerate(entries) if index in held_out]
    return write_json(_datalist(sources, class_names, training, validation), output_path)


def _target_mapping(dataset_json: str | os.PathLike, mapping: Mapping[int, str], class_index: dict) -> dict[str, int]:
    """{source value: class name} -> {"<source value>": class index}, checked."""
    if not mapping:
        raise InvalidInputError(f"{dataset_json}: the label mapping is empty; map at least one label value to a class")
    for value, name in mapping.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{dataset_json}: source label values must be positive integers, got {value!r}")
        if name not in class_index:
            raise InvalidInputError(
                f"{dataset_json}: the label mapping names class {name!r}, which is not one of the target classes "
                f"{', '.join(class_index)}"
            )
    return {str(value): class_index[name] for value, name in sorted(mapping.items())}


def _merged_entry(entry: dict, label_mapping: dict[str, int], folder: Path) -> dict:
    return {
        "image": _relative(entry["image"], folder),
        "label": _relative(entry["label"], folder),
        "annotated_classes": sorted(set(label_mapping.values())),
        "label_mapping": label_mapping,
    }


def _relative(path: str, folder: Path) -> str:
    """``path`` relative to ``folder``, or absolute where there is no relative path (another Windows drive)."""
    absolute = os.path.abspath(path)
    try:
        return os.path.relpath(absolute, folder)
    except ValueError:
        return absolute


def _validation_indices(num_cases: int, fraction: float, rng: np.random.Generator) -> set[int]:
    """The cases held out for validation: ``round(fraction * n)``, at least 1 and at most n - 1 when fraction > 0."""
    if fraction == 0.0:
        return set()
    count = min(num_cases - 1, max(1, round(fraction * num_cases)))
    return set(rng.permutation(num_cases)[:count].tolist())


def _datalist(sources: Sequence, class_names: Sequence[str], training: list, validation: list) -> dict:
    content = {
        "description": "Partially labelled datalist merged by common.smile.partial_datalist from "
        + ", ".join(str(dataset_json) for dataset_json, _ in sources),
        "labels": {"0": "background", **{str(index): name for index, name in enumerate(class_names, start=1)}},
        "numTraining": len(training),
        "training": training,
    }
    if validation:
        content.update(numValidation=len(validation), validation=validation)
    return content


def site_datalist(
    datalist: Mapping, num_foreground_classes: int, seed: int = 0, group_key: str | None = "patient"
) -> dict:
    """A copy of ``datalist`` whose training cases are split among K single-structure "sites".

    Site k (1..K) annotates class k only: every ``training`` entry gets ``annotated_classes: [site]``. Cases are
    grouped by ``entry[group_key]`` (e.g. both frames of an ACDC patient), or each case is its own group when
    ``group_key`` is None; the groups, in order of first appearance, are shuffled with ``seed`` and dealt to the
    sites in turn, so group counts per site differ by at most one. Other sections (validation, test) are copied
    unchanged and keep their full labels.

    Raises:
        InvalidInputError: when there is no ``training`` list, a training entry lacks ``group_key``, or there are
            fewer groups than sites.
    """
    if num_foreground_classes < 1:
        raise ValueError(f"num_foreground_classes must be at least 1, got {num_foreground_classes}")
    result = copy.deepcopy(dict(datalist))
    training = result.get("training")
    if not isinstance(training, list):
        raise InvalidInputError("the datalist has no 'training' list of cases to assign to sites")
    groups: dict = {}
    for index, entry in enumerate(training):
        if group_key is None:
            groups[index] = [entry]
        elif not isinstance(entry, Mapping) or group_key not in entry:
            name = entry.get("image", f"#{index}") if isinstance(entry, Mapping) else f"#{index}"
            raise InvalidInputError(
                f"training case {name} has no {group_key!r} key to group it by; add it to every training entry, "
                "or group each case on its own (group_key None, --group_key '')"
            )
        else:
            groups.setdefault(entry[group_key], []).append(entry)
    if len(groups) < num_foreground_classes:
        unit = "cases" if group_key is None else f"groups of {group_key!r}"
        raise InvalidInputError(
            f"{len(groups)} training {unit} cannot cover {num_foreground_classes} sites: each site needs at least one"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    members = list(groups.values())
    for position, group_index in enumerate(order.tolist()):
        for entry in members[group_index]:
            entry["annotated_classes"] = [position % num_foreground_classes + 1]
    return result


def parse_mapping(text: str) -> dict[int, str]:
    """Parse a command line label mapping: ``"1=liver,2=liver"`` -> ``{1: "liver", 2: "liver"}``.

    Raises:
        ValueError: when ``text`` is not comma-separated VALUE=CLASS pairs with distinct integer values.
    """
    mapping = {}
    for item in text.split(","):
        value, separator, name = (part.strip() for part in item.partition("="))
        if not separator or not value.isdecimal() or not name or int(value) in mapping:
            raise ValueError(
                f"malformed label mapping {text!r}: expected VALUE=CLASS pairs separated by commas, each value once, "
                "e.g. 1=liver,2=liver"
            )
        mapping[int(value)] = name
    return mapping


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: merge the sources and print the path of the merged datalist.

    ``sites`` as the first argument runs :func:`site_datalist` instead (see the module's docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sites"]:
        _sites_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m common.smile.partial_datalist",
        description="Merge MSD datasets into one partially labelled datalist (label files are left as they are).",
    )
    parser.add_argument("--classes", nargs="+", required=True, help="target foreground classes: class k is the k-th")
    parser.add_argument(
        "--source",
        action="append",
        nargs=2,
        required=True,
        metavar=("DATASET_JSON", "MAPPING"),
        help="an MSD dataset.json and its label mapping, e.g. 1=liver,2=liver; repeat for each dataset",
    )
    parser.add_argument("--output", required=True, help="the merged dataset.json")
    parser.add_argument("--key", default="training", help="section read from each source")
    parser.add_argument("--validation_fraction", type=float, default=0.0, help="share of each source for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    args = parser.parse_args(argv)
    sources = []
    for dataset_json, text in args.source:
        try:
            sources.append((dataset_json, parse_mapping(text)))
        except ValueError as error:
            parser.error(f"--source {dataset_json}: {error}")
    try:
        path = merge_datasets(sources, args.classes, args.output, args.key, args.validation_fraction, args.seed)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Merged datalist: {path}")


def _sites_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m common.smile.partial_datalist sites",
        description="Assign each training case (patient) of a datalist to one single-structure site.",
    )
    parser.add_argument("--datalist", required=True, help="the fully labelled datalist JSON")
    parser.add_argument("--num_foreground_classes", type=int, required=True, help="K: the number of sites")
    parser.add_argument("--output", required=True, help="the datalist written, with annotated_classes per case")
    parser.add_argument("--seed", type=int, default=0, help="seed of the assignment")
    parser.add_argument("--group_key", default="patient", help="key grouping cases; '' for one case per group")
    args = parser.parse_args(argv)
    if Path(os.path.abspath(args.output)) == Path(os.path.abspath(args.datalist)):
        parser.error("--output would overwrite --datalist")
    try:
        with open(args.datalist, encoding="utf-8") as file:
            datalist = json.load(file)
        if not isinstance(datalist, dict):
            raise InvalidInputError("the datalist is not a JSON object")
        result = site_datalist(datalist, args.num_foreground_classes, args.seed, args.group_key or None)
    except (OSError, ValueError) as error:
        parser.exit(1, f"{parser.prog}: error: {args.datalist}: {error}\n")
    _rebase_paths(result, Path(os.path.abspath(args.datalist)).parent, Path(os.path.abspath(args.output)).parent)
    print(f"Site datalist: {write_json(result, args.output)}")


def _rebase_paths(datalist: dict, source_folder: Path, output_folder: Path) -> None:
    """Make the relative image and label paths of every section relative to the output's folder, in place."""
    if source_folder == output_folder:
        return
    for section in datalist.values():
        if not isinstance(section, list):
            continue
        for entry in section:
            for key in ("image", "label"):
                if isinstance(entry, dict) and isinstance(entry.get(key), str) and not os.path.isabs(entry[key]):
                    entry[key] = _relative(str(source_folder / entry[key]), output_folder)


if __name__ == "__main__":
    main()
