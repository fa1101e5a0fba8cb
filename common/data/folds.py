"""Training/validation splits for small datasets: the datalist's own split, or K-fold cross-validation."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence

from common.data.datalist import load_datalist
from common.errors import InvalidInputError

__all__ = ["balanced_sample_weights", "stratified_folds", "training_split"]


def training_split(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    num_folds: int = 0,
    fold: int = 0,
    seed: int = 0,
    group_key: str = "body_part",
) -> dict[str, list[dict]]:
    """The training and validation cases for one run.

    With ``num_folds`` 0 or 1 these are the datalist's "training" and "validation" sections. With ``num_folds``
    K ≥ 2 the two sections are pooled and split into K folds, stratified by ``group_key`` (every body part is
    spread over the folds as evenly as its count allows); fold ``fold`` validates and the other K − 1 train. The
    "test" section is never touched, so a held-out test set stays held out across folds.

    Returns:
        ``{"training": [...], "validation": [...]}``, entries with absolute paths.

    Raises:
        InvalidInputError: ``fold`` outside 0..K−1, or fewer cases than folds.
    """
    training = load_datalist(datalist, dataset_dir, key="training")
    if num_folds <= 1:
        return {"training": training, "validation": load_datalist(datalist, dataset_dir, key="validation")}
    if not 0 <= fold < num_folds:
        raise InvalidInputError(
            f"{datalist}: fold {fold} does not exist with num_folds {num_folds} (use 0..{num_folds - 1})"
        )
    cases = training + load_datalist(datalist, dataset_dir, key="validation", missing_ok=True)
    if len(cases) < num_folds:
        raise InvalidInputError(f"{datalist}: {len(cases)} training and validation cases cannot make {num_folds} folds")
    folds = stratified_folds(cases, num_folds, seed, group_key)
    return {
        "training": [case for index, part in enumerate(folds) if index != fold for case in part],
        "validation": folds[fold],
    }


def stratified_folds(cases: Sequence[dict], num_folds: int, seed: int = 0, group_key: str = "body_part") -> list[list]:
    """``cases`` dealt into ``num_folds`` folds: shuffled within each group, then dealt round-robin, group after group.

    Every group is spread as evenly as its count allows (a group smaller than K lands in different folds), and the
    fold sizes differ by at most one.
    """
    rng = random.Random(seed)
    by_group: dict[str, list[dict]] = {}
    for case in cases:
        by_group.setdefault(str(case.get(group_key, "")), []).append(case)
    ordered = []
    for group in sorted(by_group):
        rng.shuffle(by_group[group])
        ordered += by_group[group]
    return [ordered[fold::num_folds] for fold in range(num_folds)]


def balanced_sample_weights(cases: Sequence[dict], group_key: str = "body_part") -> list[float]:
    """Sampling weights that draw every group (body part) equally often: 1 / (number of cases in its group).

    For a ``WeightedRandomSampler``: rare body parts are drawn as often as common ones, each time with fresh
    augmentations, like the paper's balancing of body parts. Cases without ``group_key`` form one group.
    """
    groups = [str(case.get(group_key, "")) for case in cases]
    counts = Counter(groups)
    return [1.0 / counts[group] for group in groups]
