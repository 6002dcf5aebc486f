"""Statistics that say what they mean: interval coverage, the confusion-matrix bootstrap, the threshold search."""

from __future__ import annotations

import numpy as np
import pytest

from astroclass.metrics import (
    balanced_accuracy_and_macro_f1,
    best_threshold,
    binary_report,
    classification_metrics,
    confusion,
    confusion_bootstrap,
    student_t_interval,
    wilson_interval,
)


def _brute_force_threshold(y, p_pos, positive):
    """The definition: every distinct score (and 0.5) tried, balanced accuracy maximised, ties nearest 0.5."""
    from sklearn.metrics import balanced_accuracy_score

    cands = np.unique(np.concatenate([p_pos, [0.5]]))
    return float(max((balanced_accuracy_score(y, np.where(p_pos >= t, positive, 1 - positive)), -abs(t - 0.5), t)
                     for t in cands)[2])


@pytest.mark.parametrize("seed", range(6))
def test_threshold_search_by_the_roc_curve_equals_trying_every_threshold(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y = (rng.uniform(size=n) < rng.uniform(0.05, 0.5)).astype(int)
    y[:2] = (0, 1)  # both classes present
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    if seed % 2:
        p = np.round(p, 1)  # many tied scores
    positive = seed % 3 % 2
    p_pos = p if positive == 1 else 1 - p
    assert best_threshold(y, p_pos, positive) == pytest.approx(_brute_force_threshold(y, p_pos, positive))


def test_intervals_have_their_nominal_coverage_where_the_percentile_bootstrap_over_seeds_did_not():
    rng = np.random.default_rng(0)
    truth = 0.8
    # over seeds: 2 and 3 per-seed test accuracies around the true mean
    for n in (2, 3):
        hits_t = hits_boot = 0
        for _ in range(2000):
            v = rng.normal(truth, 0.02, n)
            lo, hi = student_t_interval(v)
            hits_t += lo <= truth <= hi
            means = v[rng.integers(0, n, (1000, n))].mean(1)  # what the report used before: percentile bootstrap
            blo, bhi = np.quantile(means, [0.025, 0.975])
            hits_boot += blo <= truth <= bhi
        assert 0.93 <= hits_t / 2000 <= 0.97, n
        assert hits_boot / 2000 < 0.85, n  # measured: 0.50 (n = 2), 0.76 (n = 3)
    # over images: Wilson for an accuracy of 0.9 on 60 test images
    hits = sum(lo <= 0.9 <= hi for lo, hi in (wilson_interval(int(k), 60) for k in rng.binomial(60, 0.9, 2000)))
    assert 0.92 <= hits / 2000 <= 0.98
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Wilson (1927), textbook values
    assert np.isnan(student_t_interval([0.8])).all()


def test_confusion_matrix_bootstrap_is_the_image_bootstrap_in_constant_memory():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    pred = np.where(rng.uniform(size=400) < 0.7, y, rng.integers(0, 3, 400))
    boot = confusion_bootstrap(confusion_matrix(y, pred), n_boot=4000, seed=0)
    idx = rng.integers(0, 400, (4000, 400))
    direct_bal = [balanced_accuracy_score(y[i], pred[i]) for i in idx]
    direct_f1 = [f1_score(y[i], pred[i], average="macro") for i in idx]
    assert boot["balanced_accuracy"] == pytest.approx(np.quantile(direct_bal, [0.025, 0.975]), abs=0.01)
    assert boot["macro_f1"] == pytest.approx(np.quantile(direct_f1, [0.025, 0.975]), abs=0.01)
    # a million test images: the interval costs what 400 did, and is narrow around the estimate
    big = confusion_matrix(y, pred) * 2500
    lo, hi = confusion_bootstrap(big)["balanced_accuracy"]
    point = balanced_accuracy_score(y, pred)
    assert lo < point < hi and hi - lo < 0.005


def test_classification_metrics_report_every_interval():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    probs = np.clip(np.stack([1 - y, y], 1) * 0.6 + rng.uniform(0, 0.4, (200, 2)), 0, 1)
    m = classification_metrics(y, probs, ["a", "b"])
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = m[f"{key}_ci95"]
        assert lo <= m[key] <= hi, key
    correct = int((probs.argmax(1) == y).sum())
    assert m["accuracy_ci95"] == list(wilson_interval(correct, 200))


@pytest.mark.parametrize("seed", range(4))
def test_balanced_accuracy_and_macro_f1_are_scikit_learns(seed):
    """Balanced accuracy: scikit-learn's (mean recall over the classes present); macro-F1: scikit-learn's over
    every label with zero_division=0; also where a class is absent from the labels or the predictions."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(seed)
    k = 4
    y = rng.integers(0, k - (seed % 2), 300)  # odd seeds: the last class has no image
    pred = np.where(rng.uniform(size=300) < 0.6, y, rng.integers(0, k - (seed >= 2), 300))  # seeds 2-3: never predicted
    bal, macro = balanced_accuracy_and_macro_f1(confusion(y, pred, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the absent class
        assert bal == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
        assert macro == pytest.approx(f1_score(y, pred, labels=list(range(k)), average="macro", zero_division=0),
                                      abs=1e-12)


def test_a_split_without_one_class_gets_one_definition_everywhere_and_no_warnings():
    """A test split holding only stars (small data does that): the report's metrics, their intervals and the metrics
    at the binary threshold agree, and nothing warns."""
    import warnings

    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 2, 100)
    p_val = np.clip(np.stack([1 - y_val, y_val], 1) * 0.5 + rng.uniform(0, 0.5, (100, 2)), 0, 1)
    y_test = np.zeros(60, dtype=np.int64)
    p1 = rng.uniform(0, 1, 60)
    p_test = np.stack([1 - p1, p1], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(y_test, p_test, ["star", "galaxy"])
        t = binary_report(y_val, p_val, y_test, p_test, 1, ["star", "galaxy"])
    recall_star = float((p_test.argmax(1) == 0).mean())
    assert m["balanced_accuracy"] == pytest.approx(recall_star)  # the mean recall over the one class present
    assert m["macro_f1"] == pytest.approx(2 * recall_star / (1 + recall_star) / 2)  # the galaxy's F1 counts as 0
    assert m["balanced_accuracy_ci95"][0] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci95"][1]
    pred_t = np.where(p_test[:, 1] >= t["value"], 1, 0)
    assert (t["test"]["balanced_accuracy"], t["test"]["macro_f1"]) == \
        balanced_accuracy_and_macro_f1(confusion(y_test, pred_t, 2))
    assert t["test"]["recall"] == {"star": float((pred_t == 0).mean()), "galaxy": 0.0}
    assert np.isnan(t["test_roc_auc"])


def test_an_interval_over_seeds_holds_the_test_images_error_and_is_never_zero_width():
    """Three seeds at 0.950, 0.951 and 0.952 on the same 500 images: Student-t over the seeds alone gives
    [0.9485, 0.9535], as if the 500 images were the whole sky; with the images' sampling error the interval is
    at least one seed's Wilson interval, [0.927, 0.966]. Tied seeds still get a width."""
    import numpy as np

    from astroclass.metrics import seeds_and_images_interval, seeds_interval, student_t_interval, wilson_interval

    accs = [0.950, 0.951, 0.952]
    t_lo, t_hi = student_t_interval(accs)
    assert (round(t_lo, 4), round(t_hi, 4)) == (0.9485, 0.9535)
    w_lo, w_hi = wilson_interval(round(0.951 * 500), 500)
    lo, hi = seeds_interval(accs, 500)
    assert lo <= w_lo < 0.93 and hi >= w_hi > 0.965
    # from the runs' predictions: three seeds right on 475, 476 and 476 of 500 images
    correct = np.array([np.arange(500) < right for right in (475, 476, 476)])
    b_lo, b_hi = seeds_and_images_interval(correct)
    assert b_lo <= w_lo < 0.93 and b_hi >= w_hi > 0.965
    tied = seeds_and_images_interval(np.ones((3, 200), bool))
    assert tied[0] < 1 and tied[1] == 1  # all right on 200 images: not a certainty
    assert seeds_and_images_interval(correct, seed=0) == seeds_and_images_interval(correct, seed=0)
