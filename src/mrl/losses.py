"""MatryoshkaLoss: one weighted term of any base loss per nesting size.

MRL's objective (Kusupati et al. 2022, eq. 1) is sum_m c_m * L(W_m z[:m], y), averaged over
samples. The wrapper follows sentence-transformers' MatryoshkaLoss: it wraps any loss, checks its
arguments, and keeps the weights c_m (default 1) in a registered buffer so they follow the module's
device, unlike the official MRL code which builds them on the CPU inside forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mrl.errors import MRLError
from mrl.nesting import truncate, validate_nesting


class MatryoshkaLoss(nn.Module):
    """Sum over nesting sizes of ``weights[g] * base_loss(output_g, *targets)``.

    Two ways to feed it:

    * ``truncate=False`` (default): ``outputs`` holds one output per size, a tensor [G, ...] (as
      :class:`~mrl.heads.MatryoshkaLinear` returns) or a sequence of G tensors.
    * ``truncate`` given: the base loss sees prefixes of embedding arguments [..., d], so a
      contrastive or distillation loss over embeddings works as it is. Which positional arguments
      (0 = the first) are cut, and which of those are then L2-normalised, is the caller's choice:

      =================================== ===========================================================
      ``truncate`` / ``normalize``        effect
      =================================== ===========================================================
      ``True`` / ``False``                every floating tensor with >= 2 dims is cut to [..., :m];
                                          labels (integer or 1-D tensors) pass through
      ``True`` / ``True``                 ... and every cut argument is normalised
      ``(0, 1)`` / ``(0,)``               arguments 0 and 1 are cut, only argument 0 is normalised
      =================================== ===========================================================

      sentence-transformers' ``MatryoshkaLoss`` cuts and normalises the model's embeddings and cuts
      embedding-shaped labels (a teacher's, for MSE distillation) without normalising them: for a
      student/teacher pair ``loss(student, teacher)`` that is ``truncate=True, normalize=(0,)``;
      for losses on pairs of the model's embeddings (MultipleNegativesRanking, CoSENT),
      ``truncate=True, normalize=True``.

    Args:
        base_loss: any callable loss; defaults to ``nn.CrossEntropyLoss()``.
        nesting: ascending prefix sizes.
        weights: relative importance c_m per size (default all 1), non-negative.
        truncate: ``False``, ``True`` (every embedding argument) or the positions of the arguments to cut.
        normalize: ``True`` (every cut argument), ``False``, or the positions of the cut arguments to
            L2-normalise (floor 1e-6 on the norm, as :func:`~mrl.nesting.truncate`).

    Example:
        >>> from mrl.heads import MatryoshkaLinear
        >>> head = MatryoshkaLinear(16, 3, nesting=[4, 8, 16])
        >>> loss = MatryoshkaLoss(nesting=[4, 8, 16])
        >>> value = loss(head(torch.randn(6, 16)), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> value.shape
        torch.Size([])
        >>> distill = MatryoshkaLoss(nn.MSELoss(), nesting=[4, 8, 16], truncate=True, normalize=(0,))
        >>> distill(torch.randn(6, 16), torch.randn(6, 16)).shape  # student cut + normalised, teacher cut
        torch.Size([])
    """

    def __init__(
        self,
        base_loss: Callable[..., torch.Tensor] | None = None,
        nesting: Sequence[int] = (),
        weights: Sequence[float] | None = None,
        truncate: bool | Sequence[int] = False,
        normalize: bool | Sequence[int] = False,
    ) -> None:
        super().__init__()
        self.nesting = validate_nesting(nesting)
        self.base_loss = base_loss if base_loss is not None else nn.CrossEntropyLoss()
        if not callable(self.base_loss):
            raise MRLError(f"base_loss must be callable, got {type(self.base_loss).__name__}")
        if weights is None:
            w = torch.ones(len(self.nesting))
        else:
            w = torch.as_tensor(list(weights), dtype=torch.float32)
            if w.shape != (len(self.nesting),):
                raise MRLError(f"weights must have one value per nesting size ({len(self.nesting)}), got {list(weights)}")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise MRLError(f"weights must be finite and non-negative, got {list(weights)}")
        self.register_buffer("weights", w)
        self.truncate = _positions(truncate, "truncate")
        self.normalize = _positions(normalize, "normalize")
        if self.truncate is False and self.normalize is not False:
            raise MRLError("normalize applies to truncated arguments; pass truncate=True or argument positions too")
        if isinstance(self.truncate, tuple) and isinstance(self.normalize, tuple):
            extra = sorted(set(self.normalize) - set(self.truncate))
            if extra:
                raise MRLError(f"normalize names argument(s) {extra} that truncate={list(self.truncate)} does not cut")

    def per_size(self, outputs, *targets) -> torch.Tensor:
        """Unweighted base loss at every size, [G]."""
        if self.truncate is not False:
            args = (outputs, *targets)
            values = [self.base_loss(*(self._cut(i, t, m) for i, t in enumerate(args))) for m in self.nesting]
        else:
            if len(outputs) != len(self.nesting):
                raise MRLError(f"expected {len(self.nesting)} outputs (one per nesting size), got {len(outputs)}")
            if self._fusable(outputs, targets):
                return self._fused_cross_entropy(outputs, targets[0])
            values = [self.base_loss(out, *targets) for out in outputs]
        return torch.stack([torch.as_tensor(v) for v in values])

    def _fusable(self, outputs, targets) -> bool:
        loss = self.base_loss
        return (
            type(loss) is nn.CrossEntropyLoss and loss.weight is None and loss.reduction == "mean"
            and isinstance(outputs, torch.Tensor) and outputs.dim() == 3
            and len(targets) == 1 and isinstance(targets[0], torch.Tensor) and targets[0].dim() == 1
            and not targets[0].is_floating_point()
        )

    def _fused_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # One kernel for all sizes instead of G: same value as G calls of the base loss.
        g, b, c = logits.shape
        loss = self.base_loss
        per_sample = nn.functional.cross_entropy(
            logits.reshape(g * b, c), target.repeat(g), reduction="none",
            ignore_index=loss.ignore_index, label_smoothing=loss.label_smoothing,
        ).view(g, b)
        kept = (target != loss.ignore_index).to(per_sample.dtype)
        return (per_sample * kept).sum(dim=1) / kept.sum()

    def _cut(self, position: int, t, m: int):
        if self.truncate is True:
            # Labels and other non-embedding arguments pass through untouched.
            if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 2):
                return t
        elif position not in self.truncate:
            return t
        elif not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise MRLError(f"argument {position} is listed in truncate but is not an embedding tensor [..., d]")
        if t.shape[-1] < self.nesting[-1]:
            raise MRLError(f"embeddings of size {t.shape[-1]} are smaller than the largest nesting size {self.nesting[-1]}")
        normalize = self.normalize is True or (self.normalize is not False and position in self.normalize)
        return truncate(t, m, normalize=normalize)

    def forward(self, outputs, *targets) -> torch.Tensor:
        return (self.weights * self.per_size(outputs, *targets)).sum()

    def extra_repr(self) -> str:
        return f"nesting={self.nesting}, truncate={self.truncate}, normalize={self.normalize}"


def distillation_per_size(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``student`` against the soft predictions of ``teacher`` at every size, [G].

    In-place distillation (Universally Slimmable Networks, Yu & Huang, ICCV 2019): a
    smaller width learns from the full width's predictions, not only from the labels. The teacher is
    detached so that no gradient flows into it from the student. Per size g and example b the term
    is -sum_c softmax(teacher[g, b])_c * log_softmax(student[g, b])_c, averaged over b; it differs
    from KL(teacher || student) by the teacher's entropy, a constant for the student.

    Shape:
        student, teacher: [G, B, C] (one logit matrix per nesting size) -> [G]

    Example:
        >>> logits = torch.randn(2, 4, 3)
        >>> distillation_per_size(logits, torch.zeros(2, 4, 3)).allclose(-logits.log_softmax(-1).mean(-1).mean(-1))
        True
    """
    if student.dim() != 3 or student.shape != teacher.shape:
        raise MRLError(f"student and teacher logits must both be [G, B, C], got {tuple(student.shape)} and {tuple(teacher.shape)}")
    soft = teacher.detach().softmax(-1)
    return -(soft * student.log_softmax(-1)).sum(-1).mean(-1)


def _positions(value: bool | Sequence[int], name: str) -> bool | tuple[int, ...]:
    """``True``/``False`` as given, or a sequence of argument positions as a sorted tuple."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise MRLError(f"{name} must be True, False or a sequence of argument positions, got {value!r}")
    positions = tuple(sorted(set(value)))
    if not positions or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in positions):
        raise MRLError(f"{name} positions must be non-negative integers (0 = the first argument), got {list(value)}")
    return positions
