"""GLUE's metrics on predictions (accuracy, F1, Matthews correlation, Pearson and Spearman), the
majority-class baseline, and whether a score is within noise of it.

Plain numpy, defined as scikit-learn and scipy define them (tests/test_finetune.py compares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """The fraction of predictions equal to the labels.

    Examples:
    >>> accuracy([0, 1, 1, 0], [0, 1, 0, 0])
    0.75
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions))


def f1(labels: Sequence[int], predictions: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC and QQP F1); 0 when nothing is predicted positive
    or nothing is positive (scikit-learn's `zero_division=0`).

    Examples:
    >>> round(f1([0, 1, 1, 0], [0, 1, 0, 1]), 4)
    0.5
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    true_positive = np.sum((predictions == positive) & (labels == positive))
    denominator = np.sum(predictions == positive) + np.sum(labels == positive)
    return float(2 * true_positive / denominator) if denominator else 0.0


def mcc(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K, scikit-learn's); 0 when
    it is undefined (a constant prediction or label).

    Examples:
    >>> mcc([0, 1, 1, 0], [0, 1, 1, 0]), mcc([0, 1, 1, 0], [1, 1, 1, 1])
    (1.0, 0.0)
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    true_count = np.array([np.sum(labels == k) for k in classes], dtype=np.float64)
    predicted_count = np.array([np.sum(predictions == k) for k in classes], dtype=np.float64)
    correct = float(np.sum(labels == predictions))
    samples = float(len(labels))
    covariance = correct * samples - np.dot(true_count, predicted_count)
    spread = (samples**2 - np.dot(predicted_count, predicted_count)) * (
        samples**2 - np.dot(true_count, true_count)
    )
    return float(covariance / math.sqrt(spread)) if spread > 0 else 0.0


def pearson(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson's correlation; 0 when either side is constant (undefined).

    Examples:
    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) > 0.99
    True
    """
    x = np.asarray(labels, dtype=np.float64) - np.mean(labels)
    y = np.asarray(predictions, dtype=np.float64) - np.mean(predictions)
    spread = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / spread) if spread > 0 else 0.0


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (scipy's `rankdata`, method "average")."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); 0 when undefined.

    Examples:
    >>> spearman([1.0, 2.0, 3.0], [1.0, 5.0, 9.0])
    1.0
    """
    return pearson(_ranks(labels), _ranks(predictions))


def classification_metrics(
    labels: Sequence[int], predictions: Sequence[int], num_classes: int
) -> dict[str, float]:
    """Accuracy and MCC, plus F1 of class 1 for two classes.

    Examples:
    >>> classification_metrics([0, 1, 1, 0], [0, 1, 1, 1], 2)
    {'accuracy': 0.75, 'mcc': 0.5773502691896258, 'f1': 0.8}
    """
    metrics = {"accuracy": accuracy(labels, predictions), "mcc": mcc(labels, predictions)}
    if num_classes == 2:
        metrics["f1"] = f1(labels, predictions)
    return metrics


def regression_metrics(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlations (GLUE's STS-B).

    Examples:
    >>> regression_metrics([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])
    {'pearson': 0.5, 'spearman': 0.5}
    """
    return {"pearson": pearson(labels, predictions), "spearman": spearman(labels, predictions)}


def within_noise(score: float, baseline: float, num_examples: int, metric: str) -> bool:
    """Whether `score` is not clearly above the baseline's: less than two standard errors above
    it (a proportion's sqrt(p(1-p)/n) for accuracy and F1; 1/sqrt(n) for a correlation).

    Args:
        score: the fine-tuned model's metric.
        baseline: the majority-class (or mean) predictor's metric.
        num_examples: dev-set size.
        metric: the metric's name.

    Examples:
    >>> within_noise(0.70, 0.684, 408, "accuracy"), within_noise(0.84, 0.684, 408, "accuracy")
    (True, False)
    """
    if metric in ("accuracy", "f1"):
        p = min(max(baseline, 1.0 / num_examples), 1 - 1.0 / num_examples)
        error = math.sqrt(p * (1 - p) / num_examples)
    else:
        error = 1.0 / math.sqrt(num_examples)
    return score < baseline + 2 * error
