"""Logical layers of the Rule-based Representation Learner, as CRL uses them.

A layer holds conjunction and disjunction nodes with weights W in [0, 1] (n inputs x m nodes); literal i
belongs to node j when W_ij > 0.5 (B = 1[W > 0.5]).

Discrete semantics (the forward value, always)::

    AND_j(x) = prod_i (1 - (1 - x_i) B_ij)        OR_j(x) = 1 - prod_i (1 - x_i B_ij)

Continuous relaxation (the gradient), through the logical product P(v) = 1 / (1 - sum_i ln v_i) with
dP/dv_i = P^2 / (v_i + 1e-10)::

    AND~_j(x) = P(1 - (1 - x_i) W_ij)              OR~_j(x) = 1 - P(1 - x_i W_ij)

Gradient grafting: the forward value is the discrete output, the gradient the relaxation's.

Speed. The published implementation builds (B, n, m) tensors of logarithms. In CRL every layer's
input is binary (binarised concepts, then discrete node outputs), and for binary x each sum of
logarithms is a matrix product: for the conjunction sum_i ln(1 - (1 - x_i) W_ij) = ((1 - x) @ ln(1 - W))_j,
for the disjunction (x @ ln(1 - W))_j; the discrete outputs are counts ((1 - x) @ B == 0, x @ B > 0).
`LogicalFunction` computes the forward and the published input and weight gradients with matrix
products only; non-binary inputs fall back to the reference formulas (`reference_*`), which the tests
compare against.
"""

from __future__ import annotations

import torch
from torch import nn

THRESHOLD = 0.5
INIT_RANGE = 0.5
GRAD_EPS = 1e-10
#: stands in for ln(0) = -inf so that 0 * ln(0) is 0 in matrix products (P(-1e30) = 1e-30, i.e. 0)
LOG_ZERO = -1e30


def binarize(logits: torch.Tensor, use_not: bool = True) -> torch.Tensor:
    """Concepts c = 1[logit > 0] with an identity straight-through gradient.

    (B, K) logits -> (B, 2K) literals [c, 1 - c] (or (B, K) without negations).
    """
    hard = (logits > 0).to(logits.dtype)
    c = logits + (hard - logits).detach()
    return torch.cat([c, 1 - c], dim=1) if use_not else c


def logical_product(v: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """P(v) = 1 / (1 - sum ln v) over `dim`, with the published gradient P^2 / (v + 1e-10)."""
    return _LogicalProduct.apply(v, dim)


class _LogicalProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, dim: int) -> torch.Tensor:
        p = 1.0 / (1.0 - torch.log(v).sum(dim))
        ctx.save_for_backward(v, p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, p = ctx.saved_tensors
        return (grad * p * p).unsqueeze(ctx.dim) / (v + GRAD_EPS), None


def reference_conjunction(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The published formulas, materialising (B, n, m): (discrete AND, continuous AND~)."""
    b = (w > THRESHOLD).to(x.dtype)
    discrete = torch.prod(1 - (1 - x)[:, :, None] * b[None], dim=1)
    continuous = logical_product(1 - (1 - x)[:, :, None] * w[None], dim=1)
    return discrete, continuous


def reference_disjunction(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The published formulas, materialising (B, n, m): (discrete OR, continuous OR~)."""
    b = (w > THRESHOLD).to(x.dtype)
    discrete = 1 - torch.prod(1 - x[:, :, None] * b[None], dim=1)
    continuous = 1 - logical_product(1 - x[:, :, None] * w[None], dim=1)
    return discrete, continuous


class _Graft(torch.autograd.Function):
    """Forward the discrete value, send the gradient into the continuous one."""

    @staticmethod
    def forward(ctx, discrete: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        return discrete.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


class LogicalFunction(torch.autograd.Function):
    """Conjunction or disjunction nodes on a binary input, by matrix products (see the module docstring).

    forward(x (B, n) in {0, 1}, w (n, m), conjunction: bool) -> discrete output (B, m); backward gives
    the gradients of the continuous relaxation, exactly as the published per-element formulas do.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, conjunction: bool) -> torch.Tensor:
        log_one_minus_w = torch.where(w < 1, torch.log1p(-w.clamp(max=1)), torch.full_like(w, LOG_ZERO))
        b = (w > THRESHOLD).to(x.dtype)
        active = 1 - x if conjunction else x  # inputs whose terms are not ln(1) = 0
        p = 1.0 / (1.0 - active @ log_one_minus_w)  # (B, m)
        hits = active @ b
        discrete = (hits < 0.5).to(x.dtype) if conjunction else (hits > 0.5).to(x.dtype)
        ctx.save_for_backward(x, w, p)
        ctx.conjunction = conjunction
        return discrete

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w, p = ctx.saved_tensors
        conj = ctx.conjunction
        g = grad * p * p if conj else -grad * p * p  # dL/dP per node, times P^2
        inv = 1.0 / (1.0 - w + GRAD_EPS)  # 1 / (v + eps) where the term is active (v = 1 - W)
        active = 1 - x if conj else x
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            # dv/dW = -(1 - x) (conj) or -x (disj), only on active terms
            grad_w = -(active.transpose(0, 1) @ g) * inv
        if ctx.needs_input_grad[0]:
            # conj: dv/dx = +W; active terms (x = 0) have v = 1 - W, inactive ones (x = 1) v = 1
            # disj: du/dx = -W; active terms (x = 1) have u = 1 - W, inactive ones (x = 0) u = 1
            on_active = g @ (w * inv).transpose(0, 1)
            on_inactive = (g @ w.transpose(0, 1)) / (1.0 + GRAD_EPS)
            grad_x = active * on_active + (1 - active) * on_inactive
            if not conj:
                grad_x = -grad_x
        return grad_x, grad_w, None


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


class LogicalNodes(nn.Module):
    """m conjunction (or disjunction) nodes over n inputs: forward (B, n) -> (B, m), discrete values.

    W ~ U[0, 0.5) at init (every node starts empty), clipped to [0, 1] by `clip()` after each step.
    """

    def __init__(self, n_in: int, n_nodes: int, conjunction: bool, fast: bool = True):
        super().__init__()
        self.conjunction = conjunction
        self.fast = fast  # False: always the published per-element formulas (for comparison and benchmarks)
        self.weight = nn.Parameter(INIT_RANGE * torch.rand(n_in, n_nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if self.fast and _is_binary(x):
            return LogicalFunction.apply(x, w, self.conjunction)
        ref = reference_conjunction if self.conjunction else reference_disjunction
        discrete, continuous = ref(x, w)
        return _Graft.apply(discrete, continuous)

    def continuous(self, x: torch.Tensor) -> torch.Tensor:
        """The relaxation's value (for inspection; training uses it only through the gradient)."""
        ref = reference_conjunction if self.conjunction else reference_disjunction
        return ref(x, self.weight.to(x.dtype))[1]

    @property
    def membership(self) -> torch.Tensor:
        """B = 1[W > 0.5], (n, m) bool: which literals each node holds."""
        return self.weight.detach() > THRESHOLD

    @torch.no_grad()
    def clip(self) -> None:
        self.weight.clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        kind = "conjunction" if self.conjunction else "disjunction"
        return f"{kind}, n_in={self.weight.shape[0]}, n_nodes={self.weight.shape[1]}"


class UnionLayer(nn.Module):
    """A logical layer: conjunction and disjunction nodes side by side.

    forward(x (B, n)) -> (B, n_conj + n_disj), [AND nodes | OR nodes]; with `use_not` the input is
    first doubled to [x, 1 - x] so nodes can hold negated literals.
    """

    def __init__(self, n_in: int, n_conj: int, n_disj: int, use_not: bool = False):
        super().__init__()
        self.use_not = use_not
        self.n_in = n_in
        width = 2 * n_in if use_not else n_in
        self.conj = LogicalNodes(width, n_conj, conjunction=True)
        self.disj = LogicalNodes(width, n_disj, conjunction=False)

    @property
    def n_out(self) -> int:
        return self.conj.weight.shape[1] + self.disj.weight.shape[1]

    def literals(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1 - x], dim=1) if self.use_not else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sums of logarithms in bf16/fp16 would lose the rules: the logic runs in float32 always
        with torch.autocast(device_type=x.device.type, enabled=False):
            lit = self.literals(x.float())
            return torch.cat([self.conj(lit), self.disj(lit)], dim=1)

    def clip(self) -> None:
        self.conj.clip()
        self.disj.clip()

    def l2(self) -> torch.Tensor:
        return self.conj.weight.pow(2).sum() + self.disj.weight.pow(2).sum()
