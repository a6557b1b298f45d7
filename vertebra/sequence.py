"""The sequence dynamic programme of Wu et al. (MICCAI 2023), Eq. (1)-(2) and (6).

One implementation serves three uses: the differentiable sequence loss used in training,
the per-view weights ``W_k`` of Eq. (6), and label correction at inference (the best label
sequence under the same recurrence, found by backtracking).

Notation (1-based as in the paper; the code is 0-based). ``P`` is an ``(n, c)`` table of
class probabilities: row ``i`` is the ``i``-th detected vertebra in spine order (superior
to inferior), column ``j`` the ``j``-th vertebra class in anatomical order (C1, C2, ...;
background is *not* a column; with the network classes of :mod:`vertebra.labels`,
``P = softmax(logits)[..., 1:]`` and 0-based column ``j`` is network class ``j + 1``).
With weights ``alpha`` (neighbouring class) and ``beta`` (same class)::

    G[i, j]   = max(alpha * P[i, j-1], beta * P[i, j], alpha * P[i, j+1])
                (P[i, 0] = P[i, c+1] = 0: an out-of-range neighbour counts 0)
    OPT[i, j] = P[i, j]                       if i = 1 or j = 1            (Eq. 1)
              = OPT[i-1, j-1] + G[i, j]       otherwise
    L_s       = 1 - max_j OPT[n, j] / (beta * n)                           (Eq. 2)
    W_k       = (1 - L_s^k) / sum_k' (1 - L_s^k')                          (Eq. 6)

``OPT[i, j]`` depends only on ``OPT[i-1, j-1]``: it is a sum along one diagonal of the
table, i.e. along a run of *consecutive* labels ending with class ``j`` at row ``i``; the
only choices are the end class and, at each row, which of the three neighbours scores best.

Path score (what the brute-force reference in the tests enumerates). A path is an end class
``e`` in ``1..c`` and, for every row after its start, an offset ``d_i`` in ``{-1, 0, +1}``.
Its diagonal gives row ``i`` the label ``l_i = e - (n - i)``; rows with ``l_i < 1`` lie above
C1, off the table, and do not count. The start row is ``s = max(1, n - e + 1)``. Then::

    score(e, d) = P[s, l_s] + sum_{i = s+1}^{n} w(d_i) * P[i, l_i + d_i],
    w(0) = beta, w(-1) = w(+1) = alpha, P[i, 0] = P[i, c+1] = 0,

and ``max_j OPT[n, j] = max over (e, d) of score(e, d)``. The best path's labels ``l_i``
are the corrected labels; the offsets say which neighbour each row's score came from.

Range: with probabilities in [0, 1] a one-hot table that follows consecutive labels
scores ``1 + (n - 1) * beta``, so ``L_s = 1 - (1 + (n-1) beta) / (beta n)``, which is
slightly *negative* for ``beta < 1`` (-0.25 / n with the paper's beta = 0.8); a table of
zeros gives ``L_s = 1``. This is the paper's formula, kept as written.

How the authors' released code (``train/train_id_as_seg.py``, ``compute_sequence_loss``)
differs from Eq. (1)-(2), documented here because this module follows the paper:

* It is a max over predecessors of the *accumulated* score: in place,
  ``P[i, j] = P[i, j] + max(0.1 * P[i-1, j-2], 0.8 * P[i-1, j-1], 0.1 * P[i-1, j])`` with
  ``P[i-1]`` already updated, so alpha and beta multiply the previous row's OPT (compounding
  over rows) at shifted columns, rather than multiplying the current row's ``P`` at
  columns ``j-1, j, j+1`` added to ``OPT[i-1, j-1]``.
* Its columns are the softmax channels including background (channel 0); channels 0 and 1
  are never updated (the loop starts at column 2), and the loop stops at ``class_num = 24``
  while the model has 25 channels, so the last channel is never updated either.
* The loss takes the max over the whole table, not only the last row, and the rows are
  the ground-truth vertebrae in label order (``torch.unique`` of the mask), each row the
  mean softmax over that vertebra's mask pixels.

Example:
    >>> import numpy as np
    >>> p = np.eye(4)[[1, 2, 3]]              # 3 vertebrae labelled C2, C3, C4
    >>> r = sequence_scores(p)
    >>> r.labels.tolist(), round(float(r.loss), 4)
    ([1, 2, 3], -0.0833)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vertebra.errors import VertebraError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The paper's weights: alpha for a neighbouring class, beta for the same class.
ALPHA = 0.1
BETA = 0.8


@dataclass(frozen=True)
class SequenceResult:
    """Output of :meth:`SequenceDP.scores`; torch tensors, or NumPy arrays for NumPy input.

    Attributes:
        opt: (..., n, c) the table ``OPT`` of Eq. (1) (same dtype as the input).
        loss: (...) ``L_s`` of Eq. (2) per item.
        best: (...) ``max_j OPT[n, j]``, the best path score.
        end: (...) int64, 0-based class of the last row on the best path (first on ties).
        labels: (..., n) int64, 0-based class of each row on the best path (the diagonal
            ``end - (n - 1 - i)``); -1 for rows above class 0 (off the table) and for
            padding rows past ``lengths``.
        offsets: (..., n) int64 in {-1, 0, +1}: which neighbour of ``labels`` gave the row its
            score (0 = same class, preferred on ties); 0 at the path's start row and where
            ``labels`` is -1.
    """

    opt: Any
    loss: Any
    best: Any
    end: Any
    labels: Any
    offsets: Any


@dataclass(frozen=True)
class SequenceDP:
    """The sequence recurrence of Eq. (1) with weights ``alpha`` and ``beta``.

    Args:
        alpha: weight of a neighbouring class (paper: 0.1), >= 0.
        beta: weight of the same class (paper: 0.8), > 0.
    """

    alpha: float = ALPHA
    beta: float = BETA

    def __post_init__(self) -> None:
        if not (np.isfinite(self.alpha) and self.alpha >= 0):
            raise VertebraError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise VertebraError(f"beta must be a finite number > 0, got {self.beta}")

    # ------------------------------------------------------------------ core
    def scores(self, probs, lengths=None) -> SequenceResult:
        """Run the DP and backtrack the best path.

        Differentiable in torch (through ``opt``, ``loss`` and ``best``); a loop over the
        ``n`` rows only, vectorised over classes and leading dimensions.

        Args:
            probs: (..., n, c) per-vertebra class probabilities in spine order, background
                excluded; a torch tensor (any float dtype, any device) or a NumPy array.
            lengths: optional (...) ints in [1, n]: the number of valid rows per item when
                items with fewer vertebrae are padded at the end. Default: all ``n``.

        Returns:
            A :class:`SequenceResult`; NumPy arrays when ``probs`` is a NumPy array.
        """
        import torch

        as_numpy = not isinstance(probs, torch.Tensor)
        p = _as_float_tensor(probs)
        if p.ndim < 2 or p.shape[-1] < 1 or p.shape[-2] < 1:
            raise VertebraError(
                f"probs must have shape (..., n, c) with n, c >= 1, got {tuple(p.shape)}"
            )
        n = p.shape[-2]
        lens = _lengths(lengths, p)

        alpha, beta = self.alpha, self.beta
        zero = p.new_zeros(p.shape[:-1] + (1,))
        left = torch.cat([zero, p[..., :-1]], dim=-1)  # P[i, j-1]
        right = torch.cat([p[..., 1:], zero], dim=-1)  # P[i, j+1]
        # order (same, left, right): argmax then prefers the same class on ties
        cand = torch.stack([beta * p, alpha * left, alpha * right], dim=-1)
        gain, choice = cand.max(dim=-1)  # (..., n, c)

        rows = [p[..., 0, :]]
        for i in range(1, n):
            rows.append(torch.cat([p[..., i, :1], rows[-1][..., :-1] + gain[..., i, 1:]], dim=-1))
        opt = torch.stack(rows, dim=-2)

        last = opt.gather(-2, (lens - 1)[..., None, None].expand(lens.shape + (1, p.shape[-1])))
        best, end = last[..., 0, :].max(dim=-1)
        loss = 1.0 - best / (beta * lens.to(p.dtype))

        with torch.no_grad():
            i = torch.arange(n, device=p.device)
            labels = end[..., None] - (lens[..., None] - 1 - i)  # (..., n)
            valid = (labels >= 0) & (i < lens[..., None])
            labels = torch.where(valid, labels, torch.full_like(labels, -1))
            step = valid & (labels >= 1) & (i >= 1)  # rows whose score used a choice
            picked = choice.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
            offset_of = torch.tensor([0, -1, 1], device=p.device)
            offsets = torch.where(step, offset_of[picked], torch.zeros_like(picked))

        result = SequenceResult(opt, loss, best, end, labels, offsets)
        if as_numpy:
            result = SequenceResult(*(t.detach().cpu().numpy() for t in _fields(result)))
        return result

    __call__ = scores

    def loss(self, probs, lengths=None):
        """``L_s`` of Eq. (2): (..., n, c) probabilities -> (...) loss (torch or NumPy)."""
        return self.scores(probs, lengths).loss

    def view_weights(self, probs, lengths=None, dim: int = -1):
        """Eq. (6) from per-view probabilities: (..., K, n, c) -> (..., K) weights.

        ``dim`` indexes the view axis of the *losses* (..., K); default the last.
        """
        return view_weights(self.loss(probs, lengths), dim=dim)


def sequence_scores(probs, alpha: float = ALPHA, beta: float = BETA, lengths=None):
    """:meth:`SequenceDP.scores` with the given weights; see the module docstring."""
    return SequenceDP(alpha, beta).scores(probs, lengths)


def sequence_loss(probs, alpha: float = ALPHA, beta: float = BETA, lengths=None):
    """The sequence loss ``L_s`` of Eq. (1)-(2), differentiable in torch.

    Args:
        probs: (n, c) or batched (..., n, c) per-vertebra class probabilities in spine order
            (superior to inferior), classes in anatomical order, background excluded.
        alpha: neighbouring-class weight (paper 0.1).
        beta: same-class weight (paper 0.8).
        lengths: optional (...) valid rows per item for padded batches.

    Returns:
        (...) loss per item; a torch tensor, or a NumPy array for NumPy input.
    """
    return SequenceDP(alpha, beta).scores(probs, lengths).loss


def view_weights(losses, dim: int = -1):
    """Eq. (6): ``W_k = (1 - L_k) / sum_k (1 - L_k)`` over the view axis ``dim``.

    ``1 - L_k >= 0`` for non-negative probabilities; negative values (from negative inputs)
    are clipped at 0. Where every view has ``1 - L_k = 0`` (no evidence at all) the weights
    are uniform.

    Args:
        losses: (..., K) sequence losses of K views (torch tensor or NumPy array).
        dim: the view axis.

    Returns:
        Weights of the same shape summing to 1 along ``dim``; torch or NumPy like the input.
    """
    import torch

    as_numpy = not isinstance(losses, torch.Tensor)
    loss = _as_float_tensor(losses)
    if loss.ndim < 1 or loss.shape[dim] < 1:
        raise VertebraError(f"losses need a non-empty view axis {dim}, got {tuple(loss.shape)}")
    score = (1.0 - loss).clamp(min=0.0)
    total = score.sum(dim=dim, keepdim=True)
    uniform = torch.full_like(score, 1.0 / loss.shape[dim])
    w = torch.where(total > 0, score / torch.where(total > 0, total, 1.0), uniform)
    return w.detach().cpu().numpy() if as_numpy else w


# ---------------------------------------------------------------------- helpers
def _fields(result: SequenceResult):
    return (result.opt, result.loss, result.best, result.end, result.labels, result.offsets)


def _as_float_tensor(x) -> torch.Tensor:
    import torch

    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(a))


def _lengths(lengths, p: torch.Tensor) -> torch.Tensor:
    import torch

    n = p.shape[-2]
    batch = p.shape[:-2]
    if lengths is None:
        return torch.full(batch, n, dtype=torch.int64, device=p.device)
    lens = torch.as_tensor(np.asarray(lengths) if not isinstance(lengths, torch.Tensor)
                           else lengths, device=p.device)
    if lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
        raise VertebraError("lengths must be integers")
    lens = lens.to(torch.int64)
    try:
        lens = lens.expand(batch).contiguous()
    except RuntimeError:
        raise VertebraError(
            f"lengths of shape {tuple(lens.shape)} do not match probs batch shape {tuple(batch)}"
        ) from None
    if lens.numel() and (int(lens.min()) < 1 or int(lens.max()) > n):
        raise VertebraError(f"lengths must lie in [1, n={n}], got {lens.min()}..{lens.max()}")
    return lens
