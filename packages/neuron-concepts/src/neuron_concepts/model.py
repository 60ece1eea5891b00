"""The models of Concepts from Neurons: the sparse autoencoder, facility-location selection and the
concept bottleneck (sparse decomposition over concept activation vectors + a linear classifier).

    sae = SparseAutoencoder(d_in=512, n_latents=4096)            # ReLU + L1, tied pre-encoder bias
    z = sae.encode(h); h_hat = sae.decode(z); sae.loss(h)["loss"]
    ranking, gains = facility_location(cavs, k=50)               # greedy, squared cosine similarity
    cbm = ConceptBottleneck(cavs[ranking], n_nonzero=16).fit(h_train, y_train, h_val, y_val)
    cbm.predict(h_test); cbm.contributions(h_test)                # per-concept contributions to a logit
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

log = logging.getLogger("medimg")

SAEKind = Literal["relu", "topk", "batchtopk"]


# --------------------------------------------------------------------------- sparse autoencoder


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder over feature vectors (B, d) with `n_latents` latents.

    kind "relu" (as published, after "Towards Monosemanticity" / DN-CBM)::

        x' = (x - mean) / std                      # standardisation (identity unless `set_standardization`)
        z  = ReLU(W_enc (x' - b_pre) + b_enc)      # W_enc (m, d), tied pre-encoder bias b_pre (d,)
        x'^ = W_dec z + b_pre                      # W_dec (d, m), unit-norm columns
        loss = mean_batch mean_d (x' - x'^)^2 + l1 * mean_batch sum_m |z|

    kind "topk" keeps the k largest ReLU activations of each row; "batchtopk" keeps the k x B largest of a
    batch in training and, in eval mode, the activations above a threshold estimated during training. Both
    use no L1 term; an auxiliary loss (weight `auxk_alpha`) lets dead latents reconstruct the residual.
    """

    def __init__(self, d_in: int, n_latents: int, kind: SAEKind = "relu", l1: float = 3e-5, k: int = 32,
                 auxk_alpha: float = 1 / 32, threshold_momentum: float = 0.9):
        super().__init__()
        if kind not in ("relu", "topk", "batchtopk"):
            raise ValueError(f"SparseAutoencoder: kind must be relu, topk or batchtopk, got {kind!r}")
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"SparseAutoencoder: d_in and n_latents must be positive, got {d_in}, {n_latents}")
        if kind != "relu" and not 1 <= k <= n_latents:
            raise ValueError(f"SparseAutoencoder: k must be in [1, {n_latents}], got {k}")
        self.d_in, self.n_latents, self.kind = d_in, n_latents, kind
        self.l1, self.k, self.auxk_alpha, self.threshold_momentum = l1, k, auxk_alpha, threshold_momentum
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_in))
        self.b_enc = nn.Parameter(torch.empty(n_latents))
        self.W_dec = nn.Parameter(torch.empty(d_in, n_latents))
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_std", torch.ones(d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))  # batchtopk eval threshold; < 0: not estimated yet
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initialisation: Kaiming-uniform encoder, U(+-1/sqrt(d)) encoder bias, Gaussian
        decoder with unit-norm columns, zero pre-encoder bias."""
        nn.init.kaiming_uniform_(self.W_enc, nonlinearity="relu")
        bound = 1 / math.sqrt(self.d_in)
        nn.init.uniform_(self.b_enc, -bound, bound)
        nn.init.normal_(self.W_dec)
        nn.init.zeros_(self.b_pre)
        self.constrain_decoder()

    def config(self) -> dict:
        return {"d_in": self.d_in, "n_latents": self.n_latents, "kind": self.kind, "l1": self.l1, "k": self.k,
                "auxk_alpha": self.auxk_alpha, "threshold_momentum": self.threshold_momentum}

    # -- the maps ------------------------------------------------------------------------------------
    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        """Standardise inputs with these (d,) statistics (zero-variance dimensions keep std 1)."""
        std = torch.where(std > eps, std, torch.ones_like(std))
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) raw features -> (B, m) encoder pre-activations."""
        return (self.standardize(x) - self.b_pre) @ self.W_enc.T + self.b_enc

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        z = torch.relu(pre)
        if self.kind == "topk":
            values, index = z.topk(self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, index, values)
        if self.kind == "batchtopk":
            if self.training:
                flat = z.flatten()
                keep = min(self.k * z.shape[0], flat.numel())
                values, index = flat.topk(keep)
                out = torch.zeros_like(flat).scatter(0, index, values).view_as(z)
                positive = values[values > 0]
                if positive.numel():  # running estimate of the smallest kept activation (used in eval)
                    low = positive.min().detach()
                    m = self.threshold_momentum
                    self.threshold.copy_(low if self.threshold < 0 else m * self.threshold + (1 - m) * low)
                return out
            if self.threshold >= 0:
                return z * (z > self.threshold)
            values, index = z.topk(self.k, dim=-1)  # before any training step: per-row top-k
            return torch.zeros_like(z).scatter(-1, index, values)
        return z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) raw features -> (B, m) sparse non-negative latent activations."""
        return self._activate(self.pre_activation(x))

    def decode_standardized(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.T + self.b_pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, m) latents -> (B, d) reconstruction in the raw feature space."""
        return self.decode_standardized(z) * self.input_std + self.input_mean

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) -> (latents (B, m), reconstruction (B, d))."""
        z = self.encode(x)
        return z, self.decode(z)

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"loss", "mse", "l1", "auxk", "latents" (B, m) detached} on a batch x (B, d), in the standardised space.

        `dead` (m,) bool marks dead latents for the TopK auxiliary loss (ignored by kind "relu").
        """
        xs = self.standardize(x)
        pre = (xs - self.b_pre) @ self.W_enc.T + self.b_enc
        z = self._activate(pre)
        recon = self.decode_standardized(z)
        mse = ((xs - recon) ** 2).mean(dim=1).mean()
        l1 = z.abs().sum(dim=1).mean()
        auxk = xs.new_zeros(())
        if self.kind == "relu":
            loss = mse + self.l1 * l1
        else:
            loss = mse
            if dead is not None and self.auxk_alpha > 0 and bool(dead.any()):
                k_aux = min(self.d_in // 2, int(dead.sum()))
                dead_pre = torch.relu(pre).masked_fill(~dead, 0.0)
                values, index = dead_pre.topk(k_aux, dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, index, values)
                residual = (xs - recon).detach()
                auxk = ((residual - z_aux @ self.W_dec.T) ** 2).mean(dim=1).mean()
                loss = loss + self.auxk_alpha * auxk
        return {"loss": loss, "mse": mse, "l1": l1, "auxk": auxk, "latents": z.detach()}

    # -- the decoder constraint ------------------------------------------------------------------
    @torch.no_grad()
    def constrain_decoder(self) -> None:
        """Renormalise every decoder column to unit L2 norm (after each optimizer step)."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from the decoder gradient its component parallel to each (unit-norm) column."""
        if self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec
            g.sub_((g * w).sum(dim=0, keepdim=True) * w)


def sae_metrics(sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """Reconstruction R^2 (raw space, 1 - SSE / SS around the mean), mean L0, dead-latent fraction,
    mean MSE (standardised space) of `sae` on features x (N, d)."""
    sse, l0, count = 0.0, 0.0, torch.zeros(sae.n_latents, dtype=torch.long)
    mse = 0.0
    was = sae.training
    sae.eval()
    mean = x.double().mean(0)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size]
            z, recon = sae(xb)
            sse += float(((xb - recon).double() ** 2).sum())
            mse += float(((sae.standardize(xb) - sae.standardize(recon)).double() ** 2).mean(1).sum())
            l0 += float((z > 0).sum())
            count += (z > 0).sum(0).cpu()
    sae.train(was)
    sst = float(((x.double() - mean) ** 2).sum())
    n = max(len(x), 1)
    return {"r2": 1.0 - sse / sst if sst > 0 else float("nan"), "l0": l0 / n, "mse": mse / n,
            "dead_fraction": float((count == 0).float().mean()), "alive": int((count > 0).sum())}


@torch.no_grad()
def encode_all(sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Latent activations (N, m) of features x (N, d), in eval mode."""
    was = sae.training
    sae.eval()
    out = torch.cat([sae.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) \
        else torch.zeros(0, sae.n_latents)
    sae.train(was)
    return out


@torch.no_grad()
def resample_dead_latents(sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor,
                          optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
                          encoder_scale: float = 0.2, threshold: float = 0.5, max_count: int | None = None,
                          batch_size: int = 8192) -> int:
    """Anthropic-style resampling ("Towards Monosemanticity"): each dead latent gets an input drawn with
    probability proportional to its squared reconstruction loss; its decoder column becomes that input
    (standardised, minus the data mean) at unit norm, its encoder row the same direction scaled to
    `encoder_scale` x the mean encoder norm of the alive latents, and its encoder bias makes it fire only where
    an input's projection on that direction (from the data mean) exceeds `threshold` x the chosen input's
    (the published bias is 0: see the comment below); Adam's moments of those entries are reset. x (N, d) raw features, dead (m,) bool. Returns how many latents were resampled.
    """
    idx = torch.nonzero(dead, as_tuple=False).flatten()
    if max_count is not None and idx.numel() > max_count:  # a few at a time: many new latents at once add up
        idx = idx[torch.randperm(idx.numel(), generator=generator)[:max_count].to(idx.device)]
    if idx.numel() == 0 or len(x) == 0:
        return 0
    was = sae.training
    sae.eval()
    losses = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        xs = sae.standardize(xb)
        recon = sae.decode_standardized(sae._activate(sae.pre_activation(xb)))
        losses.append(((xs - recon) ** 2).sum(1))
    sae.train(was)
    loss = torch.cat(losses).double()
    weights = loss ** 2
    if not torch.isfinite(weights).all() or float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    # distinct inputs where there are enough (on small data, many copies of one input would add up)
    distinct = int((weights > 0).sum()) >= idx.numel()
    pick = torch.multinomial(weights.cpu(), idx.numel(), replacement=not distinct, generator=generator).to(x.device)
    centre = sae.standardize(x).mean(0)
    offsets = sae.standardize(x[pick]) - centre
    distance = offsets.norm(dim=1).clamp_min(1e-12)
    directions = offsets / distance[:, None]
    alive = ~dead
    enc_norm = sae.W_enc[alive].norm(dim=1).mean() if bool(alive.any()) else sae.W_enc.norm(dim=1).mean()
    rows = directions * encoder_scale * enc_norm
    sae.W_dec[:, idx] = directions.T.to(sae.W_dec.dtype)
    sae.W_enc[idx] = rows.to(sae.W_enc.dtype)
    # Anthropic sets the bias to 0 on centred inputs, so a new latent fires on about half of them; on small or
    # non-centred data hundreds of such latents add up coherently and wreck the reconstruction. Here the bias
    # makes a new latent fire only where the projection on its direction passes `threshold` x that of its input.
    sae.b_enc[idx] = -(rows @ (centre - sae.b_pre) + threshold * encoder_scale * enc_norm * distance).to(sae.b_enc.dtype)
    if optimizer is not None:
        for param, rows in ((sae.W_enc, (idx,)), (sae.b_enc, (idx,)), (sae.W_dec, (slice(None), idx))):
            state = optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][rows] = 0.0
    return int(idx.numel())


# --------------------------------------------------------------------------- facility location


def squared_cosine_similarity(vectors: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, n) squared cosine similarity (apricot's metric='cosine'); zero rows are similar to nothing."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    unit = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
    return (unit @ unit.T) ** 2


def facility_location(vectors: np.ndarray, k: int, modular: np.ndarray | None = None,
                      similarity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximisation of F(S) = sum_i max_{j in S} sim(i, j) [+ sum_{j in S} modular_j].

    vectors: (n, d) concept activation vectors; sim = squared cosine similarity (or `similarity` (n, n)).
    modular: optional (n,) per-concept score added to the objective (a class-discriminative term).
    Returns (ranking (k,) indices in pick order, gains (k,) marginal gain of each pick). Ties (up to a
    relative 1e-10, so rounding does not decide them) go to the lowest index, as apricot's naive greedy.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"facility_location: vectors must be (n, d), got shape {vectors.shape}")
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"facility_location: k must be in [1, {n}] (the number of vectors), got {k}")
    if not np.isfinite(vectors).all():
        raise ValueError("facility_location: vectors contain NaN or inf")
    sim = squared_cosine_similarity(vectors) if similarity is None else np.asarray(similarity, dtype=np.float64)
    if sim.shape != (n, n):
        raise ValueError(f"facility_location: similarity must be ({n}, {n}), got {sim.shape}")
    extra = np.zeros(n) if modular is None else np.asarray(modular, dtype=np.float64).ravel()
    if extra.shape != (n,):
        raise ValueError(f"facility_location: modular must have {n} values, got {extra.shape}")
    sim_t = torch.from_numpy(np.ascontiguousarray(sim))
    if (sim_t < 0).any():
        raise ValueError("facility_location: similarities must be non-negative")
    cur = torch.zeros(n, dtype=torch.float64)  # cur[i] = max_{j in S} sim(i, j)
    chosen = torch.zeros(n, dtype=torch.bool)
    # gain[j] = sum_i max(sim(i, j) - cur[i], 0) + modular[j], kept up to date incrementally: a pick only changes
    # the rows i it covers better than before, so each step costs (changed rows) x n instead of n x n
    gain = sim_t.sum(0) + torch.from_numpy(extra)
    ranking, gains = [], []
    for _ in range(k):
        masked = gain.masked_fill(chosen, -torch.inf)
        top = float(masked.max())
        # first maximum; gains equal up to rounding (exact ties in exact arithmetic) count as ties
        j = int(torch.nonzero(masked >= top - 1e-10 * max(1.0, abs(top)))[0])
        ranking.append(j)
        gains.append(float(masked[j]))
        chosen[j] = True
        rows = torch.nonzero(sim_t[:, j] > cur).flatten()
        if rows.numel():
            block = sim_t[rows]
            old, new = cur[rows, None], sim_t[rows, j][:, None]
            gain -= (torch.clamp(block - old, min=0) - torch.clamp(block - new, min=0)).sum(0)
            cur[rows] = new[:, 0]
    return np.asarray(ranking, dtype=np.int64), np.asarray(gains, dtype=np.float64)


def facility_value(similarity: np.ndarray, subset: Sequence[int], modular: np.ndarray | None = None) -> float:
    """F(S) of a subset (the objective `facility_location` maximises greedily)."""
    subset = list(subset)
    if not subset:
        return 0.0
    sim = np.asarray(similarity, dtype=np.float64)
    value = float(sim[:, subset].max(axis=1).sum())
    return value + (float(np.asarray(modular)[subset].sum()) if modular is not None else 0.0)


# --------------------------------------------------------------------------- sparse decomposition


def sparse_decompose(embeddings: np.ndarray, dictionary: np.ndarray, n_nonzero: int,
                     fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal matching pursuit of every embedding over the dictionary rows, batched through the Gram
    matrix (scikit-learn's `orthogonal_mp_gram`); equal to `OrthogonalMatchingPursuit(n_nonzero_coefs,
    fit_intercept).fit(dictionary.T, h)` run per embedding.

    embeddings: (N, d); dictionary: (K, d) concept vectors. The "samples" of each OMP problem are the d
    feature dimensions: h ~ dictionary.T @ w + b * 1, ||w||_0 <= n_nonzero.
    Returns (coefficients (N, K), intercepts (N,), zero without `fit_intercept`).
    """
    from sklearn.linear_model import orthogonal_mp_gram

    H = np.asarray(embeddings, dtype=np.float64)
    D = np.asarray(dictionary, dtype=np.float64)
    if H.ndim != 2 or D.ndim != 2 or H.shape[1] != D.shape[1]:
        raise ValueError(f"sparse_decompose: embeddings (N, d) and dictionary (K, d) must share d; got "
                         f"{H.shape} and {D.shape}")
    K = D.shape[0]
    if not 1 <= n_nonzero <= K:
        raise ValueError(f"sparse_decompose: n_nonzero must be in [1, {K}] (the dictionary size), got {n_nonzero}")
    if len(H) == 0:
        return np.zeros((0, K)), np.zeros(0)
    X = D.T  # (d, K)
    if fit_intercept:
        x_mean = X.mean(axis=0)
        y_mean = H.mean(axis=1)
        Xc, Yc = X - x_mean, (H - y_mean[:, None]).T  # (d, K), (d, N)
    else:
        x_mean, y_mean = np.zeros(K), np.zeros(len(H))
        Xc, Yc = X, H.T
    gram = Xc.T @ Xc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ended prematurely.*")  # exact fits before n_nonzero atoms
        coef = orthogonal_mp_gram(gram, Xc.T @ Yc, n_nonzero_coefs=n_nonzero, copy_Gram=False, copy_Xy=False)
    coef = np.asarray(coef).reshape(K, -1).T  # (N, K)
    intercept = y_mean - coef @ x_mean if fit_intercept else np.zeros(len(H))
    return coef, intercept


# --------------------------------------------------------------------------- concept bottleneck


#: the official C search: this grid, then `c_search_steps` log-space bisection steps around the best value
C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class Contributions:
    """The decomposition of one class logit per embedding: logit = sum(values) + offset + bias.

    values (N, K): concept k's contribution; offset (N,): the decomposition intercept's term; bias (N,):
    the classifier bias; classes (N,): which class each row explains; logits (N,).
    """

    values: np.ndarray
    offset: np.ndarray
    bias: np.ndarray
    classes: np.ndarray
    logits: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """What no concept carries: offset + bias (N,)."""
        return self.offset + self.bias


class ConceptBottleneck:
    """Sparse decomposition of an embedding over K concept vectors, then a linear classifier.

    features "reconstruction" (as the official code): the classifier reads D^T w + b 1 (d,), so
    logit_y = sum_k w_k (W_y . c_k) + b (W_y . 1) + beta_y. features "coefficients": it reads w (K,),
    logit_y = sum_k V_yk w_k + beta_y. `C` None: tuned on validation accuracy over `c_grid` and
    `c_search_steps` log-space bisection steps, then the chosen model (fitted on train) is kept.

    Logits: binary -> (N, 2) log-odds of each class (+z, -z pairs); multiclass -> multinomial logits;
    multilabel -> per-label log-odds.
    """

    def __init__(self, concepts: np.ndarray, n_nonzero: int = 160, fit_intercept: bool = True,
                 features: Literal["reconstruction", "coefficients"] = "reconstruction", C: float | None = None,
                 task: Literal["binary", "multiclass", "multilabel", "ordinal"] = "multiclass",
                 c_grid: Sequence[float] = C_GRID, c_search_steps: int = 8, max_iter: int = 1000,
                 concept_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None):
        self.concepts = np.asarray(concepts, dtype=np.float64)
        if self.concepts.ndim != 2:
            raise ValueError(f"ConceptBottleneck: concepts must be (K, d), got shape {self.concepts.shape}")
        if features not in ("reconstruction", "coefficients"):
            raise ValueError(f"ConceptBottleneck: features must be reconstruction or coefficients, got {features!r}")
        self.n_nonzero = min(int(n_nonzero), self.concepts.shape[0])
        self.fit_intercept, self.features, self.C, self.task = fit_intercept, features, C, task
        self.c_grid, self.c_search_steps, self.max_iter = tuple(c_grid), int(c_search_steps), int(max_iter)
        self.concept_names = list(concept_names) if concept_names is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.search_: list[dict[str, float]] = []

    # -- the bottleneck --------------------------------------------------------------------------
    def _check(self, H: np.ndarray) -> np.ndarray:
        H = np.asarray(H, dtype=np.float64)
        if H.ndim != 2 or H.shape[1] != self.concepts.shape[1]:
            raise ValueError(f"ConceptBottleneck: embeddings must be (N, {self.concepts.shape[1]}), got {H.shape}")
        if not np.isfinite(H).all():
            raise ValueError("ConceptBottleneck: embeddings contain NaN or inf")
        return H

    def decompose(self, H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, d) -> (coefficients (N, K), intercepts (N,))."""
        return sparse_decompose(self._check(H), self.concepts, self.n_nonzero, self.fit_intercept)

    def _features(self, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        if self.features == "coefficients":
            return coef
        return coef @ self.concepts + intercept[:, None]

    def transform(self, H: np.ndarray) -> np.ndarray:
        """The classifier's input: (N, d) reconstructions or (N, K) coefficients."""
        return self._features(*self.decompose(H))

    # -- the classifier --------------------------------------------------------------------------
    def _classifier(self, C: float):
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        lr = LogisticRegression(C=C, max_iter=self.max_iter)
        return OneVsRestClassifier(lr) if self.task == "multilabel" else lr

    def _fit_one(self, F: np.ndarray, y: np.ndarray, C: float):
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            return self._classifier(C).fit(F, y)

    def _accuracy(self, clf, F: np.ndarray, y: np.ndarray) -> float:
        pred = clf.predict(F)
        return float((pred == y).mean())

    def fit(self, H: np.ndarray, y: np.ndarray, H_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> ConceptBottleneck:
        """Fit on train embeddings H (N, d) and targets y (N,) class indices or (N, L) multi-hot; with C
        None, tune C on (H_val, y_val) validation accuracy."""
        F = self.transform(H)
        y = self._check_targets(y, len(F))
        if self.C is not None:
            self.C_ = float(self.C)
            self.clf_ = self._fit_one(F, y, self.C_)
            return self._finish()
        if H_val is None or y_val is None:
            raise ValueError("ConceptBottleneck.fit: C=None tunes C on validation data; pass H_val and y_val")
        F_val = self.transform(H_val)
        y_val = self._check_targets(y_val, len(F_val))
        tried: dict[float, tuple[float, object]] = {}

        def score(C: float) -> float:
            key = float(C)
            if key not in tried:
                clf = self._fit_one(F, y, key)
                tried[key] = (self._accuracy(clf, F_val, y_val), clf)
                self.search_.append({"C": key, "val_accuracy": tried[key][0]})
            return tried[key][0]

        grid = sorted(self.c_grid, reverse=True)
        scores = [score(c) for c in grid]
        best_i = int(np.argmax(scores))  # first best = the largest C among ties, as a grid scan from 1e6 does
        best = grid[best_i]
        lo = grid[min(best_i + 1, len(grid) - 1)]
        hi = grid[max(best_i - 1, 0)]
        for _ in range(self.c_search_steps):  # log-space bisection around the best value
            left, right = math.sqrt(lo * best), math.sqrt(best * hi)
            s_left, s_right, s_best = score(left), score(right), score(best)
            if s_left > s_best and s_left >= s_right:
                hi, best = best, left
            elif s_right > s_best:
                lo, best = best, right
            else:
                lo, hi = left, right
        self.C_ = float(best)
        self.clf_ = tried[float(best)][1]
        return self._finish()

    def _check_targets(self, y: np.ndarray, n: int) -> np.ndarray:
        y = np.asarray(y)
        if len(y) != n:
            raise ValueError(f"ConceptBottleneck: {len(y)} targets for {n} embeddings")
        if self.task == "multilabel":
            if y.ndim != 2:
                raise ValueError(f"ConceptBottleneck: multilabel targets must be (N, L) 0/1, got shape {y.shape}")
            return y.astype(np.int64)
        if y.ndim != 1:
            raise ValueError(f"ConceptBottleneck: {self.task} targets must be (N,) class indices, got {y.shape}")
        return y.astype(np.int64)

    def _finish(self) -> ConceptBottleneck:
        """Collect the classifier as class logits W (C, F) and b (C,)."""
        clf = self.clf_
        if self.task == "multilabel":
            W = np.stack([e.coef_[0] for e in clf.estimators_])
            b = np.array([e.intercept_[0] for e in clf.estimators_])
            self.classes_ = np.arange(len(W))
        else:
            self.classes_ = np.asarray(clf.classes_)
            if len(self.classes_) == 2:  # one log-odds z for class 1: class 1 gets +z, class 0 -z
                W = np.stack([-clf.coef_[0], clf.coef_[0]])
                b = np.array([-clf.intercept_[0], clf.intercept_[0]])
            else:
                W, b = clf.coef_, clf.intercept_
        self.W_, self.b_ = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return self

    def load_state(self, W: np.ndarray, b: np.ndarray, classes: np.ndarray, C: float) -> ConceptBottleneck:
        """Restore a fitted model from its logits' weights (as `state` returns them)."""
        self.W_, self.b_ = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
        self.classes_, self.C_ = np.asarray(classes), float(C)
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {"concepts": self.concepts, "W": self.W_, "b": self.b_, "classes": self.classes_}

    # -- predictions and explanations ------------------------------------------------------------
    def _fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise RuntimeError("ConceptBottleneck: call fit first")

    def decision_function(self, H: np.ndarray) -> np.ndarray:
        """(N, d) -> class logits (N, C) (log-odds for binary and multilabel)."""
        self._fitted()
        return self.transform(H) @ self.W_.T + self.b_

    def predict_proba(self, H: np.ndarray) -> np.ndarray:
        """(N, C) probabilities: softmax for multiclass, sigmoid of the log-odds for binary/multilabel."""
        logits = self.decision_function(H)
        if self.task == "multilabel":
            return 1 / (1 + np.exp(-logits))
        if len(self.classes_) == 2:
            p1 = 1 / (1 + np.exp(-logits[:, 1]))
            return np.stack([1 - p1, p1], axis=1)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, H: np.ndarray) -> np.ndarray:
        """Class indices (N,), or (N, L) 0/1 for multilabel."""
        proba = self.predict_proba(H)
        if self.task == "multilabel":
            return (proba > 0.5).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]

    def concept_weights(self) -> np.ndarray:
        """(C, K) what one unit of concept k's coefficient adds to each class logit."""
        self._fitted()
        return self.W_ @ self.concepts.T if self.features == "reconstruction" else self.W_

    def contributions(self, H: np.ndarray, classes: np.ndarray | Sequence[int] | int | None = None) -> Contributions:
        """Per-concept contributions to the logit of `classes` (default: the predicted class; for
        multilabel the label with the highest log-odds). logit = values.sum(1) + offset + bias exactly."""
        self._fitted()
        coef, intercept = self.decompose(H)
        logits = self._features(coef, intercept) @ self.W_.T + self.b_
        n = len(coef)
        if classes is None:
            cls = logits.argmax(axis=1)
        else:
            cls = np.broadcast_to(np.asarray(classes, dtype=np.int64), (n,)).copy()
            if ((cls < 0) | (cls >= self.W_.shape[0])).any():
                raise ValueError(f"ConceptBottleneck.contributions: class index out of [0, {self.W_.shape[0]})")
        weights = self.concept_weights()  # (C, K)
        values = coef * weights[cls]
        offset = intercept * self.W_[cls].sum(axis=1) if self.features == "reconstruction" else np.zeros(n)
        bias = self.b_[cls]
        return Contributions(values=values, offset=offset, bias=bias, classes=cls,
                             logits=logits[np.arange(n), cls])
