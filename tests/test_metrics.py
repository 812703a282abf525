"""compute_metrics against small cases computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imagefit.evaluate.metrics import compute_metrics

KEYS = {
    "num_samples",
    "loss",
    "accuracy",
    "top5_accuracy",
    "f1_macro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "per_class",
    "confusion_matrix",
    "classes",
    "classification_report",
}


def one_hot_logits(pred: list[int], num_classes: int) -> np.ndarray:
    logits = np.zeros((len(pred), num_classes))
    logits[np.arange(len(pred)), pred] = 3.0
    return logits


def test_three_classes_by_hand() -> None:
    # true 0 0 1 1 2 2, predicted 0 1 1 1 2 0
    targets = np.array([0, 0, 1, 1, 2, 2])
    m = compute_metrics(targets, one_hot_logits([0, 1, 1, 1, 2, 0], 3), ["a", "b", "c"], 0.25)
    assert set(m) == KEYS
    assert m["num_samples"] == 6 and m["loss"] == 0.25
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["top5_accuracy"] is None  # every one of 3 classes is in the top 5: says nothing
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    pc = m["per_class"]
    assert pc["precision"] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert pc["recall"] == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert pc["accuracy"] == pc["recall"]
    assert pc["f1"] == pytest.approx([0.5, 0.8, 2 / 3])
    assert pc["support"] == [2, 2, 2]
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["f1_weighted"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # equal supports
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx(2 / 3)
    assert m["classes"] == ["a", "b", "c"]
    assert "precision" in m["classification_report"] and " b " in m["classification_report"]


def test_weighted_f1_weights_by_support() -> None:
    # class 0: 3 samples all right; class 1: 1 sample, predicted 0
    m = compute_metrics(np.array([0, 0, 0, 1]), one_hot_logits([0, 0, 0, 0], 2), ["x", "y"])
    f1_0 = 2 * 0.75 * 1.0 / 1.75
    assert m["per_class"]["f1"] == pytest.approx([f1_0, 0.0])
    assert m["f1_weighted"] == pytest.approx(0.75 * f1_0)
    assert m["f1_macro"] == pytest.approx(f1_0 / 2)  # class 1 occurs, so it counts


def test_top5_with_seven_classes() -> None:
    # Sample 0: true class ranks 1st; sample 1: 5th (a hit); sample 2: 6th (a miss).
    scores = np.array(
        [
            [7, 6, 5, 4, 3, 2, 1],
            [7, 6, 5, 4, 3, 2, 1],
            [7, 6, 5, 4, 3, 2, 1],
        ],
        dtype=float,
    )
    m = compute_metrics(np.array([0, 4, 5]), scores, list("abcdefg"))
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top5_accuracy"] == pytest.approx(2 / 3)


def test_probabilities_give_the_same_metrics_as_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 8))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    targets = rng.integers(0, 8, 40)
    a, b = (
        compute_metrics(targets, logits, list("abcdefgh")),
        compute_metrics(targets, probs, list("abcdefgh")),
    )
    assert a == b


def test_class_absent_from_a_small_split() -> None:
    # 4 classes, the split has only classes 0 and 1, all predicted right.
    m = compute_metrics(np.array([0, 1, 1]), one_hot_logits([0, 1, 1], 4), list("abcd"))
    assert m["accuracy"] == 1.0
    assert m["per_class"]["support"] == [1, 2, 0, 0]
    assert m["per_class"]["recall"] == [1.0, 1.0, 0.0, 0.0]
    assert len(m["confusion_matrix"]) == 4 and all(len(r) == 4 for r in m["confusion_matrix"])
    # Absent, never-predicted classes do not drag the macro averages down...
    assert m["f1_macro"] == 1.0 and m["precision_macro"] == 1.0 and m["recall_macro"] == 1.0
    assert m["f1_weighted"] == 1.0
    assert " c " not in m["classification_report"]


def test_predicting_an_absent_class_counts_as_an_error() -> None:
    # ...but predicting a class that is not there does: class 2 gets F1 0 in the average.
    m = compute_metrics(np.array([0, 1]), one_hot_logits([0, 2], 3), list("abc"))
    assert m["per_class"]["f1"] == pytest.approx([1.0, 0.0, 0.0])
    assert m["f1_macro"] == pytest.approx(1 / 3)
    assert m["precision_macro"] == pytest.approx(1 / 3)


def test_two_classes_and_one_class() -> None:
    two = compute_metrics(
        np.array([0, 1, 1]), np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 1.0]]), ["n", "p"]
    )
    assert two["accuracy"] == pytest.approx(2 / 3) and two["top5_accuracy"] is None
    one = compute_metrics(np.array([0, 0]), np.array([[0.3], [0.1]]), ["only"])
    assert one["accuracy"] == 1.0 and one["confusion_matrix"] == [[2]]


def test_result_is_json_serialisable_with_plain_types() -> None:
    rng = np.random.default_rng(1)
    m = compute_metrics(
        rng.integers(0, 12, 30).astype(np.int32),
        rng.normal(size=(30, 12)).astype(np.float32),
        [f"class {i}" for i in range(12)],
        loss=np.float64(1.5),
    )
    assert json.loads(json.dumps(m)) == m
    assert type(m["loss"]) is float and type(m["num_samples"]) is int
    assert type(m["confusion_matrix"][0][0]) is int and type(m["per_class"]["support"][0]) is int
    assert all(0.0 <= m[k] <= 1.0 for k in ("accuracy", "top5_accuracy", "f1_macro", "f1_weighted"))


def test_non_finite_logits_are_scored_not_fatal() -> None:
    logits = np.array([[np.nan, 1.0, 0.0], [0.0, np.inf, 0.0], [2.0, 1.0, 0.0]])
    m = compute_metrics(np.array([1, 1, 0]), logits, list("abc"))
    assert m["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("targets", "logits", "message"),
    [
        (np.array([0, 1]), np.zeros((3, 2)), "targets but"),
        (np.array([0, 1]), np.zeros((2, 3)), "columns"),
        (np.array([0, 2]), np.zeros((2, 2)), "must lie in"),
        (np.array([0.5, 1]), np.zeros((2, 2)), "integer"),
        (np.zeros(0, int), np.zeros((0, 2)), "no samples"),
        (np.array([[0, 1]]), np.zeros((2, 2)), "must be"),
    ],
)
def test_bad_inputs_raise(targets: np.ndarray, logits: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(targets, logits, ["a", "b"])


def test_top5_needs_more_than_five_classes() -> None:
    targets = np.arange(7)
    logits = np.tile(np.arange(7, dtype=float), (7, 1))  # class 6 first, then 5, 4, ...
    m = compute_metrics(targets, logits, [str(i) for i in range(7)])
    assert m["accuracy"] == pytest.approx(1 / 7)
    assert m["top5_accuracy"] == pytest.approx(5 / 7)  # classes 2..6 are in the top 5
    two = compute_metrics(np.array([0, 1]), np.eye(2), ["a", "b"])
    assert two["top5_accuracy"] is None
