"""Properties of the evaluation metrics (ops.metrics): mAP, the official cal_map bug, top-k."""
import math

import pytest
import torch

from ops.metrics import AveragePrecision, labels_to_multi_hot, mean_average_precision, topk_accuracy
from reference_math import official_map


# --- brute-force references (plain Python loops, one class at a time) -----------------------------
def _brute_ap(scores, truth):
    """Per-class AP in percent, NaN when a class has no positive.

    Precision at a positive with score s = #positives scoring >= s / #samples scoring >= s (tied
    samples count as ranked together); without ties this is the official cumsum definition."""
    n, c = scores.shape
    out = []
    for k in range(c):
        col = scores[:, k].tolist()
        pos = [i for i in range(n) if truth[i, k]]
        if not pos:
            out.append(float("nan"))
            continue
        precs = []
        for i in pos:
            above = sum(1 for j in range(n) if col[j] >= col[i])
            above_pos = sum(1 for j in pos if col[j] >= col[i])
            precs.append(above_pos / above)
        out.append(100.0 * sum(precs) / len(pos))
    return out


def _brute_official_map(logits, labels):
    """The official cal_map written literally: re-map labels, per-class sort and cumsum."""
    labels = labels.clone()
    distinct = sorted(set(v for v in labels.reshape(-1).tolist() if v >= 0))
    rank = {v: r for r, v in enumerate(distinct)}
    n, c = logits.shape
    probs = torch.softmax(logits.double(), 1)
    aps = []
    for k in range(c):
        positive = [any(rank.get(v, -2) == k for v in labels[i].tolist()) for i in range(n)]
        order = sorted(range(n), key=lambda i: (-float(probs[i, k]), i))
        hits, total = 0, 0.0
        for r, i in enumerate(order, start=1):
            if positive[i]:
                hits += 1
                total += hits / r
        aps.append(100.0 * total / max(hits, 1))
    return sum(aps) / c, aps


def _random_case(seed, n=60, c=7, max_labels=3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, c, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n, max_labels), generator=g)
    drop = torch.rand(n, max_labels, generator=g) < 0.5
    drop[:, 0] = False
    labels[drop] = -1
    return scores, labels


# --- targets ---------------------------------------------------------------------------------------
def test_labels_to_multi_hot_marks_each_listed_label_and_ignores_padding():
    labels = torch.tensor([[2, -1, -1], [0, 3, -1], [1, 1, 4]])
    expected = torch.tensor([[0, 0, 1, 0, 0], [1, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(labels_to_multi_hot(labels, 5), expected)


def test_labels_to_multi_hot_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match=r"\[-1, 4\)"):
        labels_to_multi_hot(torch.tensor([[0, 4]]), 4)


# --- mean average precision ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_brute_force_per_class_loop(seed):
    scores, labels = _random_case(seed)
    truth = labels_to_multi_hot(labels, scores.shape[1])
    m, ap = mean_average_precision(scores, labels)
    ref = _brute_ap(scores, truth)
    assert torch.allclose(ap, torch.tensor(ref, dtype=torch.float64), atol=1e-9, equal_nan=True)
    assert m == pytest.approx(sum(ref) / len(ref), abs=1e-9)


def test_map_float32_scores_match_brute_force():
    scores, labels = _random_case(3, n=200, c=11)
    scores = scores.float()
    _, ap = mean_average_precision(scores, labels)
    ref = _brute_ap(scores, labels_to_multi_hot(labels, 11))
    assert torch.allclose(ap, torch.tensor(ref, dtype=torch.float64), atol=1e-9)


def test_map_tied_scores_count_all_tied_samples_as_ranked_together():
    # integer scores: many ties inside and across positives/negatives
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 4, (80, 5), generator=g).float()
    labels = torch.randint(0, 5, (80, 2), generator=g)
    _, ap = mean_average_precision(scores, labels)
    ref = _brute_ap(scores, labels_to_multi_hot(labels, 5))
    assert torch.allclose(ap, torch.tensor(ref, dtype=torch.float64), atol=1e-9)


def test_map_all_equal_scores_gives_the_positive_rate():
    labels = torch.tensor([[0], [0], [1], [2], [2], [2]])
    _, ap = mean_average_precision(torch.zeros(6, 3), labels)
    assert torch.allclose(ap, torch.tensor([2 / 6, 1 / 6, 3 / 6], dtype=torch.float64) * 100)


def test_map_multi_hot_and_label_list_targets_agree():
    scores, labels = _random_case(5)
    a = mean_average_precision(scores, labels)
    b = mean_average_precision(scores, labels_to_multi_hot(labels, scores.shape[1]))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_map_absent_class_is_nan_and_excluded_from_mean_by_default():
    scores, labels = _random_case(6, c=6)
    labels[labels == 2] = 0                          # class 2 never occurs
    m, ap = mean_average_precision(scores, labels)
    assert math.isnan(ap[2])
    present = torch.cat((ap[:2], ap[3:]))
    assert m == pytest.approx(float(present.mean()), abs=1e-12)


def test_map_absent_zero_mode_counts_absent_class_as_zero():
    scores, labels = _random_case(6, c=6)
    labels[labels == 2] = 0
    m_zero, ap = mean_average_precision(scores, labels, absent="zero")
    assert math.isnan(ap[2])
    assert m_zero == pytest.approx(float(torch.nan_to_num(ap).sum()) / 6, abs=1e-12)


def test_map_rejects_nan_scores():
    scores, labels = _random_case(7)
    scores[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(scores, labels)


def test_map_blocked_multithreaded_path_matches_brute_force(monkeypatch):
    # force many small class blocks (run on the thread pool) as on large inputs
    import ops.metrics as metrics
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    scores, labels = _random_case(11, n=90, c=9)
    _, ap = mean_average_precision(scores.float(), labels)
    ref = _brute_ap(scores.float(), labels_to_multi_hot(labels, 9))
    assert torch.allclose(ap, torch.tensor(ref, dtype=torch.float64), atol=1e-9)


def test_average_precision_rows_of_a_table_equal_the_gathered_matrix():
    scores, labels = _random_case(12, n=50, c=6)
    table = torch.rand(50 * 4, 6, generator=torch.Generator().manual_seed(0)).numpy()
    rows = torch.randint(0, 200, (50,), generator=torch.Generator().manual_seed(1)).numpy()
    ev = AveragePrecision(labels, 6)
    assert ev.evaluate_rows(table, rows)[0] == mean_average_precision(torch.from_numpy(table[rows]), labels)[0]


def test_average_precision_evaluator_is_reusable_across_score_matrices():
    scores, labels = _random_case(8)
    ev = AveragePrecision(labels, scores.shape[1])
    for s in (scores, scores.flip(0), 1 - scores):
        assert ev(s)[0] == mean_average_precision(s, labels)[0]


# --- the official cal_map and its label re-mapping bug ---------------------------------------------
# 4 videos, 5 classes, class 1 absent. Every row is a permutation of 0..4, so all rows share one
# softmax normaliser and every column ranks samples by the raw logit. Each video's own class holds
# the row maximum (4), so the correct AP of every present class is 1.
BUG_LOGITS = torch.tensor([[4., 0., 1., 2., 3.],     # label 0
                           [3., 1., 4., 0., 2.],     # label 2
                           [2., 3., 0., 4., 1.],     # label 3
                           [0., 2., 3., 1., 4.]])    # label 4
BUG_LABELS = torch.tensor([[0, -1, -1], [2, -1, -1], [3, -1, -1], [4, -1, -1]])


def test_official_map_reproduces_the_label_remapping_bug():
    # Official: labels {0,2,3,4} are re-mapped to {0,1,2,3}. Column 0 keeps video 0 (AP 1); column 1
    # gets video 1, ranked 3rd by column 1 = [0,1,3,2] (AP 1/3); column 2 gets video 2, ranked 4th by
    # [1,4,0,3] (AP 1/4); column 3 gets video 3, ranked 3rd by [2,0,4,1] (AP 1/3); column 4 has no
    # positive (AP 0). mAP = (1 + 1/3 + 1/4 + 1/3 + 0) / 5 = 38.33 %.
    m, ap = official_map(BUG_LOGITS, BUG_LABELS)
    assert m == pytest.approx(100 * (1 + 1 / 3 + 1 / 4 + 1 / 3) / 5, abs=1e-4)
    assert torch.allclose(ap, torch.tensor([100, 100 / 3, 25, 100 / 3, 0]), atol=1e-4)


def test_correct_map_of_the_bug_example():
    probs = torch.softmax(BUG_LOGITS, 1)
    assert mean_average_precision(probs, BUG_LABELS)[0] == pytest.approx(100.0)
    assert mean_average_precision(probs, BUG_LABELS, absent="zero")[0] == pytest.approx(80.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_official_map_matches_a_literal_brute_force_of_cal_map(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 6, generator=g)
    labels = torch.randint(0, 6, (40, 2), generator=g)
    labels[labels == 4] = 1                          # class 4 absent: the re-mapping matters
    labels[::2, 1] = -1
    m, ap = official_map(logits, labels)
    ref_m, ref_ap = _brute_official_map(logits, labels)
    assert m == pytest.approx(ref_m, abs=1e-4)
    assert torch.allclose(ap.double(), torch.tensor(ref_ap, dtype=torch.float64), atol=1e-4)


def test_official_map_equals_correct_map_when_every_class_occurs():
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(30, 5, generator=g)
    labels = torch.cat((torch.arange(5), torch.randint(0, 5, (25,), generator=g))).unsqueeze(1)
    assert official_map(logits, labels)[0] == pytest.approx(
        mean_average_precision(torch.softmax(logits, 1), labels)[0], abs=1e-4)


# --- top-k accuracy --------------------------------------------------------------------------------
def test_topk_accuracy_matches_brute_force():
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(50, 8, generator=g)
    target = torch.randint(0, 8, (50,), generator=g)
    ranks = [sorted(range(8), key=lambda j: -float(logits[i, j])).index(int(target[i])) for i in range(50)]
    expected = [100.0 * sum(r < k for r in ranks) / 50 for k in (1, 3, 5)]
    assert topk_accuracy(logits, target, ks=(1, 3, 5)) == pytest.approx(expected)


def test_topk_accuracy_counts_a_tie_at_the_top_as_a_hit():
    logits = torch.tensor([[1.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    assert topk_accuracy(logits, torch.tensor([1, 1]), ks=(1,)) == [50.0]
