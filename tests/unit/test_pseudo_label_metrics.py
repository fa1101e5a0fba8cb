import math

import numpy as np
import torch

from common.smile import precision_recall, pseudo_label_counts


def test_counts_per_evaluated_class():
    truth = torch.tensor([[[1, 1, 0], [2, 2, 0]]])
    pseudo = torch.tensor([[[1, 0, 1], [2, 0, 0]]])
    counts = pseudo_label_counts(pseudo, truth, np.array([1, 1]))
    # class 1: TP at (0,0), FP at (0,2), FN at (0,1); class 2: TP at (1,0), FN at (1,1)
    assert counts.tolist() == [[1, 1, 1], [1, 0, 1]]
    assert pseudo_label_counts(pseudo, truth, np.array([0, 1])).tolist() == [[0, 0, 0], [1, 0, 1]]


def test_precision_recall_from_summed_counts_with_nan_when_undefined():
    precision, recall = precision_recall(torch.tensor([[3, 1, 2], [0, 0, 4], [0, 0, 0]]))
    assert precision[0].item() == 0.75 and recall[0].item() == 0.6
    assert math.isnan(precision[1].item()) and recall[1].item() == 0.0
    assert math.isnan(precision[2].item()) and math.isnan(recall[2].item())
