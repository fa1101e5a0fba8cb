import json

import pytest

from common.data.folds import balanced_sample_weights, stratified_folds, training_split
from common.errors import InvalidInputError


@pytest.fixture
def datalist(tmp_path):
    parts = ["hand"] * 6 + ["knee"] * 3 + ["foot"] * 3
    for index in range(len(parts)):
        (tmp_path / f"xr_{index}.png").write_bytes(b"")
        (tmp_path / f"xr_{index}_label.png").write_bytes(b"")
    cases = [{"image": f"xr_{i}.png", "label": f"xr_{i}_label.png", "body_part": part} for i, part in enumerate(parts)]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": cases[:9], "validation": cases[9:], "test": []}))
    return path


def test_without_folds_the_datalist_split_is_kept(datalist):
    split = training_split(datalist)
    assert len(split["training"]) == 9 and len(split["validation"]) == 3


def test_folds_partition_training_and_validation_stratified_by_body_part(datalist):
    validation_sets = []
    for fold in range(3):
        split = training_split(datalist, num_folds=3, fold=fold, seed=1)
        training = {case["image"] for case in split["training"]}
        validation = {case["image"] for case in split["validation"]}
        assert not training & validation and len(training | validation) == 12
        assert sorted(case["body_part"] for case in split["validation"]) == ["foot", "hand", "hand", "knee"]
        validation_sets.append(validation)
    assert len(set.union(*validation_sets)) == 12  # every case validates in exactly one fold


def test_folds_are_reproducible_with_the_seed(datalist):
    first, second = (training_split(datalist, num_folds=3, fold=1, seed=5) for _ in range(2))
    assert first == second


def test_a_fold_outside_the_range_is_refused(datalist):
    with pytest.raises(InvalidInputError, match="fold 3 does not exist with num_folds 3"):
        training_split(datalist, num_folds=3, fold=3)


def test_balanced_weights_draw_each_body_part_equally():
    cases = [{"body_part": "hand"}] * 4 + [{"body_part": "knee"}] + [{}]
    weights = balanced_sample_weights(cases)
    assert weights == [0.25] * 4 + [1.0, 1.0]


def test_groups_smaller_than_the_fold_count_are_spread_and_sizes_stay_even():
    cases = [{"id": i, "body_part": part} for i, part in enumerate("aaabbcdee")]
    folds = stratified_folds(cases, num_folds=4, seed=0)
    assert sorted(len(fold) for fold in folds) == [2, 2, 2, 3]
    assert sorted(case["id"] for fold in folds for case in fold) == list(range(9))
    for part in "abe":  # 3, 2 and 2 cases: never twice in one fold
        assert all(sum(case["body_part"] == part for case in fold) <= 1 for fold in folds)


def test_folds_without_a_validation_section_pool_the_training_cases(datalist):
    content = json.loads(datalist.read_text())
    datalist.write_text(json.dumps({"training": content["training"]}))
    split = training_split(datalist, num_folds=3, fold=0)
    assert len(split["training"]) + len(split["validation"]) == 9


def test_a_bad_validation_entry_is_reported_even_with_folds(datalist):
    (datalist.parent / "xr_11.png").unlink()
    with pytest.raises(InvalidInputError, match=r"xr_11\.png does not exist"):
        training_split(datalist, num_folds=3, fold=0)
