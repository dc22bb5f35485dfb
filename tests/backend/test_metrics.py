import numpy as np
import pytest
from geossl.metrics import confusion_matrix, scores


def test_confusion_matrix_counts_and_ignores():
    ref = np.array([0, 0, 1, 1, 2, 255, 2])
    pred = np.array([0, 1, 1, 1, 0, 2, 2])
    cm = confusion_matrix(ref, pred, 3, ignore=255)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_scores_match_hand_computation():
    # Congalton's classic 2-class example, computed by hand:
    # cm = [[45, 5], [15, 35]]; OA = 0.80; pe = (50*60 + 50*40)/100^2 = 0.5; kappa = 0.6
    s = scores(np.array([[45, 5], [15, 35]]), ["a", "b"])
    assert s["overall_accuracy"] == pytest.approx(0.80)
    assert s["kappa"] == pytest.approx(0.60)
    a = s["per_class"]["a"]
    assert a["precision"] == pytest.approx(45 / 60)
    assert a["recall"] == pytest.approx(45 / 50)
    assert a["f1"] == pytest.approx(2 * (45 / 60) * (45 / 50) / (45 / 60 + 45 / 50))
    assert a["iou"] == pytest.approx(45 / (50 + 60 - 45))
    assert s["miou"] == pytest.approx((45 / 65 + 35 / 55) / 2)
    assert s["confusion_matrix"] == [[45, 5], [15, 35]]


def test_perfect_and_absent_classes():
    s = scores(np.diag([10, 0, 5]))
    assert s["overall_accuracy"] == 1.0 and s["kappa"] == 1.0
    assert s["miou"] == 1.0  # the absent class is left out of the mean
    assert s["per_class"]["1"]["support"] == 0
