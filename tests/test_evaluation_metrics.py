"""Point metrics, calibration and the operating point against values computed by hand on small fixed arrays."""

import numpy as np
import pytest

from covidxray.evaluation.calibration import expected_calibration_error, reliability_bins
from covidxray.evaluation.metrics import confusion, cross_entropy, encode_labels, point_metrics
from covidxray.evaluation.operating_point import choose_operating_point, threshold_for_sensitivity

CLASSES = ["covid", "normal", "pneumonia"]
# 8 images; arg-max predictions are [0, 0, 1, 1, 0, 2, 2, 2] -> 5 of 8 correct.
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.8, 0.1],
        [0.5, 0.4, 0.1],
        [0.2, 0.3, 0.5],
        [0.1, 0.2, 0.7],
        [0.3, 0.3, 0.4],
    ]
)


def test_per_class_rates_by_hand():
    v = point_metrics(Y, PROBS, CLASSES).values
    assert v["accuracy"] == pytest.approx(5 / 8)
    # covid: TP 2, FN 1, FP 1 (image 4), TN 4
    assert v["sensitivity[covid]"] == pytest.approx(2 / 3)
    assert v["specificity[covid]"] == pytest.approx(4 / 5)
    assert v["ppv[covid]"] == pytest.approx(2 / 3)
    assert v["npv[covid]"] == pytest.approx(4 / 5)
    assert v["f1[covid]"] == pytest.approx(2 / 3)
    # normal: TP 1, FN 2, FP 1 (image 2), TN 4
    assert v["sensitivity[normal]"] == pytest.approx(1 / 3)
    assert v["ppv[normal]"] == pytest.approx(1 / 2)
    assert v["npv[normal]"] == pytest.approx(4 / 6)
    assert v["f1[normal]"] == pytest.approx(2 / 5)
    # pneumonia: TP 2, FN 0, FP 1 (image 5), TN 5
    assert v["sensitivity[pneumonia]"] == pytest.approx(1.0)
    assert v["specificity[pneumonia]"] == pytest.approx(5 / 6)
    assert v["npv[pneumonia]"] == pytest.approx(1.0)
    assert v["f1[pneumonia]"] == pytest.approx(4 / 5)


def test_auc_and_average_precision_by_hand():
    v = point_metrics(Y, PROBS, CLASSES).values
    # covid scores: positives 0.7, 0.6, 0.2; negatives 0.1, 0.5, 0.2, 0.1, 0.3.
    # pairs won: 5 + 5 + (2 + 0.5 for the tie at 0.2) = 12.5 of 15
    assert v["roc_auc[covid]"] == pytest.approx(12.5 / 15)
    # ranked 0.7 P, 0.6 P, 0.5 N, 0.3 N, {0.2 P, 0.2 N}: AP = 1/3 * (1 + 1 + 3/6)
    assert v["pr_auc[covid]"] == pytest.approx((1 + 1 + 0.5) / 3)
    per_class = [v[f"roc_auc[{c}]"] for c in CLASSES]
    assert v["roc_auc[macro]"] == pytest.approx(np.mean(per_class))


def test_loss_and_confusion():
    p_true = [0.7, 0.6, 0.2, 0.8, 0.4, 0.3, 0.7, 0.4]
    assert cross_entropy(Y, PROBS) == pytest.approx(-np.mean(np.log(p_true)))
    assert confusion(Y, PROBS).tolist() == [[2, 1, 0], [1, 1, 1], [0, 0, 2]]


def test_ece_by_hand():
    # confidences 0.7 0.6 0.5 0.8 0.5 0.5 0.7 0.4, correct 1 1 0 1 0 0 1 1; 10 bins:
    # bin4 |1-0.4| + bin5 |0-1.5| + bin6 |1-0.6| + bin7 |2-1.4| + bin8 |1-0.8| = 3.3, / 8 images
    assert expected_calibration_error(Y, PROBS, n_bins=10) == pytest.approx(3.3 / 8)
    bins = reliability_bins(Y, PROBS, n_bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 1, 3, 1, 2, 1, 0]
    assert bins.accuracy[5] == 0 and bins.confidence[5] == pytest.approx(0.5)
    # one bin: |accuracy - mean confidence| = |5/8 - 4.7/8|
    assert expected_calibration_error(Y, PROBS, n_bins=1) == pytest.approx(0.3 / 8)


def test_ece_perfectly_calibrated_is_zero():
    y = np.array([0, 0, 0, 1])  # confidence 0.75 everywhere, right 3 times of 4
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)


def test_undefined_metrics_have_reasons():
    # no covid image, nothing predicted pneumonia
    y = np.array([1, 1, 2])
    probs = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.6, 0.3]])
    m = point_metrics(y, probs, CLASSES)
    assert m.values["sensitivity[covid]"] is None and m.reasons["sensitivity[covid]"] == "no covid images"
    assert m.values["roc_auc[covid]"] is None and "no covid" in m.reasons["roc_auc[covid]"]
    assert m.values["ppv[pneumonia]"] is None and "predicted pneumonia" in m.reasons["ppv[pneumonia]"]
    assert m.values["specificity[covid]"] == pytest.approx(2 / 3)  # 1 of 3 non-covid images predicted covid
    assert m.values["roc_auc[macro]"] == pytest.approx(
        np.mean([m.values["roc_auc[normal]"], m.values["roc_auc[pneumonia]"]])
    )
    assert "covid undefined" in m.notes["roc_auc[macro]"]


def test_encode_labels_rejects_unknown():
    assert encode_labels(["normal", "covid"], CLASSES).tolist() == [1, 0]
    with pytest.raises(ValueError, match="tuberculosis"):
        encode_labels(["tuberculosis"], CLASSES)


def test_threshold_for_sensitivity_by_hand():
    y_pos = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
    assert threshold_for_sensitivity(y_pos, scores, 0.75) == pytest.approx(0.4)  # 3 of 4 positives
    assert threshold_for_sensitivity(y_pos, scores, 1.0) == pytest.approx(0.3)
    assert threshold_for_sensitivity(y_pos, scores, 0.5) == pytest.approx(0.8)
    assert threshold_for_sensitivity(y_pos[:4], scores[:4], 0.75) == pytest.approx(0.4)  # positives only
    with pytest.raises(ValueError):
        threshold_for_sensitivity(~y_pos[:4], scores[:4], 0.95)


def test_operating_point_chosen_on_val_applied_to_test():
    val_pos = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    val_scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
    test_pos = np.array([1, 1, 1, 0, 0, 0], bool)
    test_scores = np.array([0.95, 0.5, 0.35, 0.45, 0.3, 0.1])
    op = choose_operating_point(
        "covid",
        val_pos,
        val_scores,
        test_pos,
        test_scores,
        ["a", "b", "c", "d", "e", "f"],
        target=0.75,
        n_resamples=200,
    )
    assert op.threshold == pytest.approx(0.4)
    assert op.chosen_on["sensitivity"] == pytest.approx(0.75) and op.chosen_on[
        "specificity"
    ] == pytest.approx(0.75)
    # on test, 0.35 < 0.4 is missed and 0.45 is a false positive
    assert op.applied_to["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert op.applied_to["specificity"]["value"] == pytest.approx(2 / 3)
    lo, hi = op.applied_to["sensitivity"]["ci"]
    assert lo <= 2 / 3 <= hi
    entry = op.bundle_entry()
    assert entry["class"] == "covid" and entry["threshold"] == pytest.approx(0.4)
    assert entry["target_sensitivity"] == 0.75


def test_inference_result_gives_one_class_column_by_name():
    from covidxray.evaluation.inference import InferenceResult

    res = InferenceResult(PROBS[:, [1, 0, 2]], np.zeros((8, 2), np.float32), ["normal", "covid", "pneumonia"])
    assert np.array_equal(res.probability("covid"), PROBS[:, 0])
    with pytest.raises(KeyError, match="not one of this model's classes"):
        res.probability("rest")
