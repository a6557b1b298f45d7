"""The sequence DP of Eq. (1)-(2) and (6) against a brute-force enumeration of paths."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from drrkit.errors import DrrkitError
from vertebra.sequence import SequenceDP, sequence_loss, sequence_scores, view_weights


def brute_force(p, alpha, beta):
    """Max path score by enumerating every end class e and offset d_i in {-1, 0, 1}.

    Path score as written in the vertebra.sequence docstring (1-based there, 0-based here):
    row i gets label l_i = e - (n-1-i); rows with l_i < 0 are off the table; the start row
    s = max(0, n-1-e) scores P[s, l_s]; each later row scores w(d_i) P[i, l_i + d_i] with
    w(0) = beta, w(+-1) = alpha and 0 outside the table. Returns (best, path (e, d)).
    """
    n, c = p.shape
    get = lambda i, j: p[i, j] if 0 <= j < c else 0.0
    best, arg = -np.inf, None
    for e in range(c):
        s = max(0, n - 1 - e)
        for d in itertools.product((-1, 0, 1), repeat=n - 1 - s):
            score = get(s, e - (n - 1 - s))
            for i, di in zip(range(s + 1, n), d):
                label = e - (n - 1 - i)
                score += (beta if di == 0 else alpha) * get(i, label + di)
            if score > best:
                best, arg = score, (e, d)
    return best, arg


def literal_opt(p, alpha, beta):
    """Eq. (1) transcribed cell by cell with Python loops (1-based indices as the paper)."""
    n, c = p.shape
    P = lambda i, j: p[i - 1, j - 1] if 1 <= j <= c else 0.0
    opt = np.zeros((n + 1, c + 1))
    for i in range(1, n + 1):
        for j in range(1, c + 1):
            if i == 1 or j == 1:
                opt[i, j] = P(i, j)
            else:
                opt[i, j] = opt[i - 1, j - 1] + max(
                    alpha * P(i, j - 1), beta * P(i, j), alpha * P(i, j + 1)
                )
    return opt[1:, 1:]


tables = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
weights = st.sampled_from([(0.1, 0.8), (0.3, 0.5), (0.0, 1.0), (0.6, 0.2)])


@given(tables, weights)
def test_matches_brute_force_and_literal_recurrence(shape, ab):
    n, c, seed = shape
    alpha, beta = ab
    p = np.random.default_rng(seed).random((n, c))
    r = sequence_scores(p, alpha, beta)
    best, (e, d) = brute_force(p, alpha, beta)
    np.testing.assert_allclose(r.opt, literal_opt(p, alpha, beta), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r.best, best, rtol=1e-12)
    np.testing.assert_allclose(r.loss, 1 - best / (beta * n), rtol=1e-12)
    # random continuous data: the best path is unique, so the backtrack must find it
    assert int(r.end) == e
    expected = [e - (n - 1 - i) if e - (n - 1 - i) >= 0 else -1 for i in range(n)]
    assert r.labels.tolist() == expected
    s = max(0, n - 1 - e)
    expected_offsets = [0] * (s + 1) + [int(v) for v in d]
    assert r.offsets.tolist() == expected_offsets


def test_one_hot_sequence_closed_form():
    n, c, first = 5, 26, 7  # T1..T5 (0-based classes 7..11)
    p = np.zeros((n, c))
    p[np.arange(n), first + np.arange(n)] = 1.0
    r = sequence_scores(p)  # paper weights
    assert r.labels.tolist() == list(range(first, first + n))
    assert r.offsets.tolist() == [0] * n
    np.testing.assert_allclose(r.best, 1 + (n - 1) * 0.8)
    np.testing.assert_allclose(r.loss, 1 - (1 + (n - 1) * 0.8) / (0.8 * n))  # = -0.25 / n
    np.testing.assert_allclose(sequence_loss(np.zeros((n, c))), 1.0)


def test_corrects_an_outlier_label():
    # a run C3..C7 where the 4th vertebra is confidently mislabelled as L2
    n, c = 5, 26
    p = np.full((n, c), 0.01)
    truth = np.arange(2, 2 + n)
    p[np.arange(n), truth] = 0.9
    p[3] = 0.01
    p[3, 21] = 0.9
    r = sequence_scores(p)
    assert r.labels.tolist() == truth.tolist()
    assert p.argmax(axis=1).tolist() != truth.tolist()


def test_inconsistent_sequence_costs_more():
    rng = np.random.default_rng(1)
    n, c = 6, 26
    good = np.full((n, c), 0.02)
    good[np.arange(n), 3 + np.arange(n)] = 0.8
    shuffled = good[rng.permutation(n)]
    assert sequence_loss(good) < sequence_loss(shuffled)


def test_batched_equals_per_item_and_torch_equals_numpy():
    rng = np.random.default_rng(2)
    p = rng.random((3, 2, 4, 7))
    r = sequence_scores(torch.from_numpy(p))
    assert r.opt.shape == (3, 2, 4, 7) and r.loss.shape == (3, 2) and r.labels.shape == (3, 2, 4)
    for a in range(3):
        for b in range(2):
            one = sequence_scores(p[a, b])
            np.testing.assert_allclose(r.loss[a, b].numpy(), one.loss, rtol=1e-12)
            np.testing.assert_allclose(r.opt[a, b].numpy(), one.opt, rtol=1e-12)
            assert r.labels[a, b].tolist() == one.labels.tolist()
            assert r.offsets[a, b].tolist() == one.offsets.tolist()
    assert isinstance(sequence_loss(p), np.ndarray)
    t32 = sequence_loss(torch.from_numpy(p).float())
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), sequence_loss(p), rtol=1e-5)


def test_lengths_equal_unpadded_items():
    rng = np.random.default_rng(3)
    p = rng.random((3, 5, 6))
    lengths = np.array([5, 2, 1])
    r = sequence_scores(p, lengths=lengths)
    for b, m in enumerate(lengths):
        one = sequence_scores(p[b, :m])
        np.testing.assert_allclose(r.loss[b], one.loss, rtol=1e-12)
        assert r.labels[b, :m].tolist() == one.labels.tolist()
        assert (r.labels[b, m:] == -1).all()


def test_gradcheck_float64():
    rng = np.random.default_rng(4)
    for shape in [(4, 6), (2, 3, 5)]:
        p = torch.tensor(rng.random(shape), dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x: sequence_loss(x), (p,))
        assert torch.autograd.gradcheck(lambda x: sequence_scores(x).opt, (p,))


def test_gradient_reaches_only_the_best_path():
    p = torch.full((3, 5), 0.05, dtype=torch.float64)
    p[0, 1] = p[1, 2] = p[2, 3] = 0.9
    p.requires_grad_(True)
    sequence_loss(p).backward()
    g = p.grad
    scale = -1 / (0.8 * 3)
    np.testing.assert_allclose(g[0, 1].item(), scale)  # start row: weight 1
    np.testing.assert_allclose(g[1, 2].item(), 0.8 * scale)  # later rows: beta
    np.testing.assert_allclose(g[2, 3].item(), 0.8 * scale)
    assert torch.count_nonzero(g) == 3


def test_view_weights_eq6():
    losses = np.array([[0.2, 0.6, 1.0], [1.0, 1.0, 1.0]])
    w = view_weights(losses)
    np.testing.assert_allclose(w[0], np.array([0.8, 0.4, 0.0]) / 1.2)
    np.testing.assert_allclose(w[1], np.full(3, 1 / 3))  # no evidence anywhere: uniform
    t = view_weights(torch.tensor(losses).T, dim=0)
    np.testing.assert_allclose(t.T.numpy(), w)
    # the DP object computes them straight from per-view probabilities (K, n, c)
    rng = np.random.default_rng(5)
    pk = rng.random((4, 3, 6))
    dp = SequenceDP()
    np.testing.assert_allclose(dp.view_weights(pk), view_weights(dp.loss(pk)))
    np.testing.assert_allclose(dp.view_weights(pk).sum(), 1.0)


def test_bad_input():
    with pytest.raises(DrrkitError, match="shape"):
        sequence_loss(np.zeros(5))
    with pytest.raises(DrrkitError, match="shape"):
        sequence_loss(np.zeros((0, 4)))
    with pytest.raises(DrrkitError, match="beta"):
        SequenceDP(beta=0.0)
    with pytest.raises(DrrkitError, match="alpha"):
        SequenceDP(alpha=-1.0)
    with pytest.raises(DrrkitError, match="lengths"):
        sequence_loss(np.zeros((2, 3, 4)), lengths=[0, 3])
    with pytest.raises(DrrkitError, match="lengths"):
        sequence_loss(np.zeros((2, 3, 4)), lengths=[1, 2, 3])


def test_import_vertebra_is_light_and_exports_lazily():
    import subprocess
    import sys

    code = (
        "import sys, vertebra; assert 'torch' not in sys.modules, 'torch imported';"
        "from vertebra.sequence import sequence_loss; assert vertebra.sequence_loss is"
        " sequence_loss; assert vertebra.SequenceDP is not None"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
