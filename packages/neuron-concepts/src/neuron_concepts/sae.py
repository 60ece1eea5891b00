"""The sparse autoencoder of Concepts from Neurons and its training loop (plain torch on a feature tensor).

    sae = SparseAutoencoder(d_in=512, n_latents=4096)            # ReLU + L1, tied pre-encoder bias
    z = sae.encode(h); h_hat = sae.decode(z); sae.loss(h)["loss"]
    sae, history, info = fit_sae(h_train, SAEConfig(), seed=0)   # Adam, unit-norm decoder columns
    mean, P, P_pinv, info = whitening(h_train)                   # PCA whitening (SAEConfig.whiten; not published)
    save_sae(sae, folder); load_sae(folder)                      # sae.safetensors + sae.json

The training loop follows DN-CBM's vendored `sparse_autoencoder` (see the README's "The method as implemented").
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from medimg_core.checkpoint import CheckpointError, read_tensors, state_dict_to_cpu, write_json
from medimg_core.config import ConfigError
from medimg_core.runs import read_json_object
from neuron_concepts.config import SAEConfig

log = logging.getLogger("medimg")

SAEKind = Literal["relu", "topk", "batchtopk"]


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder over feature vectors (B, d) with `n_latents` latents.

    kind "relu" (as published, after "Towards Monosemanticity" / DN-CBM)::

        x' = (x - mean) / std                      # standardisation (identity unless `set_standardization`)
        x' = (x - mean) @ P                        # or PCA whitening (`whiten=True`, `set_whitening`; ours)
        z  = ReLU(W_enc (x' - b_pre) + b_enc)      # W_enc (m, d), tied pre-encoder bias b_pre (d,)
        x'^ = W_dec z + b_pre                      # W_dec (d, m), unit-norm columns
        loss = mean_batch mean_d (x' - x'^)^2 + l1 * mean_batch sum_m |z|

    kind "topk" keeps the k largest ReLU activations of each row; "batchtopk" keeps the k x B largest of a
    batch in training and, in eval mode, the activations above a threshold estimated during training. Both
    use no L1 term; an auxiliary loss (weight `auxk_alpha`) lets dead latents reconstruct the residual.

    `whiten=True` (not in the paper: our option, `sae.whiten`) gives the autoencoder two more (d, d) buffers, the
    whitening matrix P and its pseudo-inverse P^+ (see `whitening`): it reads x' = (x - mean) @ P and `decode` maps
    its output back to the feature space, x^ = x'^ @ P^+ + mean, so that every later stage sees raw features.
    """

    def __init__(self, d_in: int, n_latents: int, kind: SAEKind = "relu", l1: float = 3e-5, k: int = 32,
                 auxk_alpha: float = 1 / 32, threshold_momentum: float = 0.9, whiten: bool = False):
        super().__init__()
        if kind not in ("relu", "topk", "batchtopk"):
            raise ValueError(f"SparseAutoencoder: kind must be relu, topk or batchtopk, got {kind!r}")
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"SparseAutoencoder: d_in and n_latents must be positive, got {d_in}, {n_latents}")
        if kind != "relu" and not 1 <= k <= n_latents:
            raise ValueError(f"SparseAutoencoder: k must be in [1, {n_latents}], got {k}")
        self.d_in, self.n_latents, self.kind = d_in, n_latents, kind
        self.l1, self.k, self.auxk_alpha, self.threshold_momentum = l1, k, auxk_alpha, threshold_momentum
        self.whiten = bool(whiten)
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_in))
        self.b_enc = nn.Parameter(torch.empty(n_latents))
        self.W_dec = nn.Parameter(torch.empty(d_in, n_latents))
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_std", torch.ones(d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))  # batchtopk eval threshold; < 0: not estimated yet
        if self.whiten:  # only then: the weights of an autoencoder without whitening keep their keys
            self.register_buffer("whiten_matrix", torch.eye(d_in))  # P (d, d): x' = (x - mean) @ P
            self.register_buffer("unwhiten_matrix", torch.eye(d_in))  # P^+ (d, d): x = x' @ P^+ + mean
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
        """The constructor's arguments (what sae.json stores)."""
        return {"d_in": self.d_in, "n_latents": self.n_latents, "kind": self.kind, "l1": self.l1, "k": self.k,
                "auxk_alpha": self.auxk_alpha, "threshold_momentum": self.threshold_momentum, "whiten": self.whiten}

    # -- the maps ------------------------------------------------------------------------------------
    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        """Standardise inputs with these (d,) statistics (zero-variance dimensions keep std 1)."""
        std = torch.where(std > eps, std, torch.ones_like(std))
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def set_whitening(self, mean: torch.Tensor, matrix: torch.Tensor, inverse: torch.Tensor) -> None:
        """Whiten inputs: x' = (x - mean) @ matrix, decoded as x' @ inverse + mean (`whitening` computes them).
        Only for an autoencoder built with whiten=True."""
        if not self.whiten:
            raise ValueError("SparseAutoencoder.set_whitening: this autoencoder was built with whiten=False")
        d = self.d_in
        if mean.shape != (d,) or matrix.shape != (d, d) or inverse.shape != (d, d):
            raise ValueError(f"SparseAutoencoder.set_whitening: expected shapes ({d},), ({d}, {d}), ({d}, {d}); "
                             f"got {tuple(mean.shape)}, {tuple(matrix.shape)}, {tuple(inverse.shape)}")
        self.input_mean.copy_(mean)
        self.input_std.fill_(1.0)
        self.whiten_matrix.copy_(matrix)
        self.unwhiten_matrix.copy_(inverse)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) raw features -> the autoencoder's input space (standardised or whitened; identity by default)."""
        xs = (x - self.input_mean) / self.input_std
        return xs @ self.whiten_matrix if self.whiten else xs

    def unstandardize(self, xs: torch.Tensor) -> torch.Tensor:
        """The inverse of `standardize` (on the whitening's kept components): input space -> raw features."""
        if self.whiten:
            xs = xs @ self.unwhiten_matrix
        return xs * self.input_std + self.input_mean

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
        return self.unstandardize(self.decode_standardized(z))

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


def whitening(x: torch.Tensor, eps: float = 1e-6, floor: float = 1e-10
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """PCA whitening of features x (N, d), computed in float64: (mean (d,), P (d, d), P^+ (d, d), info).

    With the covariance C = U diag(lambda) U^T of x (divisor N - 1), P = U diag(1 / sqrt(lambda + eps * lambda_max))
    so that (x - mean) @ P has unit variance along every principal direction whose lambda is well above
    eps * lambda_max (a direction with lambda = eps * lambda_max gets variance 1/2; much weaker ones are damped, not
    amplified). Directions with lambda <= floor * lambda_max (a rank-deficient covariance: constant features,
    fewer images than features) are dropped: their columns of P and rows of P^+ are zero. P^+ = diag(sqrt(lambda +
    eps * lambda_max)) U^T on the kept directions, so (x - mean) @ P @ P^+ + mean = x for every x whose offset
    from the mean lies in the kept span (every training row, up to the dropped variance).

    info: {"eps", "floor", "kept", "dropped", "largest_eigenvalue", "smallest_kept_eigenvalue"}.
    """
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"whitening: expected at least 2 feature rows (N, d), got shape {tuple(x.shape)}")
    if not eps >= 0 or not floor >= 0:
        raise ValueError(f"whitening: eps and floor must be >= 0, got {eps}, {floor}")
    xd = x.double()
    mean = xd.mean(0)
    centred = xd - mean
    cov = centred.T @ centred / (len(x) - 1)
    lam, U = torch.linalg.eigh(cov)  # ascending
    top = float(lam[-1])
    if top <= 0:
        raise ValueError("whitening: the features have no variance (every row is the same)")
    keep = lam > floor * top
    scale = torch.where(keep, 1.0 / torch.sqrt(lam.clamp_min(0) + eps * top), torch.zeros_like(lam))
    inverse_scale = torch.where(keep, torch.sqrt(lam.clamp_min(0) + eps * top), torch.zeros_like(lam))
    P = U * scale  # column j of U scaled by scale[j]
    P_pinv = inverse_scale[:, None] * U.T
    info = {"eps": eps, "floor": floor, "kept": int(keep.sum()), "dropped": int((~keep).sum()),
            "largest_eigenvalue": top, "smallest_kept_eigenvalue": float(lam[keep].min())}
    return mean.to(x.dtype), P.to(x.dtype), P_pinv.to(x.dtype), info


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


# --------------------------------------------------------------------------- training


def fit_sae(x: torch.Tensor, cfg: SAEConfig, seed: int = 0, device: str | torch.device = "cpu",
            x_val: torch.Tensor | None = None, progress: bool = True) -> tuple[SparseAutoencoder, list[dict], dict]:
    """Train a sparse autoencoder on features x (N, d) with Adam, unit-norm decoder columns (gradient
    projected, columns renormalised after each step) and optional dead-latent resampling.

    Returns (sae in eval mode on the CPU, per-epoch history, info with the resampling events and, with
    `cfg.whiten`, the whitening's info: see `whitening`).
    """
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"fit_sae: features must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("fit_sae: the features contain NaN or inf")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    n, d = x.shape
    sae = SparseAutoencoder(d, cfg.expansion * d, cfg.kind, cfg.l1, cfg.k, cfg.auxk_alpha, whiten=cfg.whiten)
    whitened = None
    if cfg.standardize and cfg.whiten:  # SAEConfig refuses this too; a config built otherwise ends here
        raise ConfigError("sae.whiten and sae.standardize are exclusive: whitening already puts every direction "
                          "at unit variance; set one of them")
    if cfg.standardize:
        sae.set_standardization(x.mean(0), x.std(0))
    if cfg.whiten:
        mean, P, P_pinv, whitened = whitening(x, cfg.whiten_eps, cfg.whiten_floor)
        sae.set_whitening(mean, P, P_pinv)
        if whitened["dropped"]:
            log.info("SAE whitening: the train covariance has %d of %d directions at <= %g x its largest "
                     "eigenvalue; they are dropped (the autoencoder reads %d)", whitened["dropped"], d,
                     cfg.whiten_floor, whitened["kept"])
    if cfg.pre_bias_init == "mean":
        with torch.no_grad():
            sae.b_pre.copy_(sae.standardize(x).mean(0))
    sae.to(device).train()
    x_dev = x.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)
    fired_window = torch.zeros(sae.n_latents, dtype=torch.bool, device=device)
    history: list[dict] = []
    events: list[dict] = []
    step = 0
    bar = tqdm(range(cfg.epochs), desc=f"SAE {cfg.kind} {sae.n_latents} latents", unit="epoch",
               disable=None if progress else True)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(device)
        sums = {"loss": 0.0, "mse": 0.0, "l1": 0.0, "auxk": 0.0, "l0": 0.0}
        for i in range(steps_per_epoch):
            xb = x_dev[perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
            dead = since_fired >= cfg.dead_steps
            out = sae.loss(xb, dead=dead)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            sae.project_decoder_grad()
            opt.step()
            sae.constrain_decoder()
            step += 1
            active = (out["latents"] > 0).any(0)
            since_fired = torch.where(active, torch.zeros_like(since_fired), since_fired + 1)
            fired_window |= active
            for key in ("loss", "mse", "l1", "auxk"):
                sums[key] += float(out[key].detach()) * len(xb)
            sums["l0"] += float((out["latents"] > 0).sum())
            if cfg.resample_every > 0 and step % cfg.resample_every == 0 and step <= cfg.resample_stop * total:
                dead_now = ~fired_window
                limit = None if cfg.resample_max_fraction >= 1 else int(cfg.resample_max_fraction * sae.n_latents)
                count = resample_dead_latents(sae, x_dev, dead_now, opt, gen, max_count=limit)
                events.append({"step": step, "epoch": epoch + 1, "dead": int(dead_now.sum()), "resampled": count})
                log.info("SAE step %d: resampled %d dead latents", step, count)
                fired_window.zero_()
                since_fired.zero_()
        row = {"epoch": epoch + 1, **{f"train/{k}": v / n for k, v in sums.items()}}
        if x_val is not None and len(x_val) and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            m = sae_metrics(sae, x_val.to(device))
            row.update({"val/r2": m["r2"], "val/l0": m["l0"], "val/mse": m["mse"]})
        history.append(row)
        bar.set_postfix(loss=f"{row['train/loss']:.4g}", l0=f"{row['train/l0']:.1f}")
    sae.eval().cpu()
    info = {"steps": step, "steps_per_epoch": steps_per_epoch, "resampling": events}
    if whitened is not None:
        info["whitening"] = whitened
    return sae, history, info


def save_sae(sae: SparseAutoencoder, folder: Path) -> None:
    """Write `sae` into `folder` as sae.safetensors (weights and buffers) + sae.json (its constructor's arguments)."""
    save_file(state_dict_to_cpu(sae), str(folder / "sae.safetensors"))
    write_json(folder / "sae.json", sae.config())


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """The sparse autoencoder saved in `folder` (an sae stage folder or a checkpoint folder), in eval mode."""
    folder = Path(folder)
    path = folder / "sae.json"
    conf = read_json_object(path, "the sparse autoencoder's settings (sae.json)")
    try:
        sae = SparseAutoencoder(**conf)
    except (TypeError, ValueError) as exc:  # unknown or missing keys; values out of range
        raise CheckpointError(f"{path}: not the settings of a sparse autoencoder ({exc}); expected the keys "
                              "d_in, n_latents, kind, l1, k, auxk_alpha, threshold_momentum (and optionally whiten)") from None
    weights = folder / "sae.safetensors"
    state = read_tensors(weights, "the sparse autoencoder's weights")
    try:
        sae.load_state_dict(state)
    except RuntimeError as exc:  # missing keys, other shapes
        raise CheckpointError(f"{weights}: the weights do not fit the autoencoder of {path.name} "
                              f"({str(exc).splitlines()[0][:300]})") from None
    return sae.eval()
