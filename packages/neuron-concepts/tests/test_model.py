"""The math of Concepts from Neurons on fixed small inputs: SAE forward/loss, the decoder constraint,
dead-latent resampling, facility location, OMP and the concept bottleneck's logit decomposition."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import OrthogonalMatchingPursuit

from neuron_concepts import ConceptBottleneck, SparseAutoencoder, facility_location
from neuron_concepts.model import (
    facility_value,
    resample_dead_latents,
    sparse_decompose,
    squared_cosine_similarity,
)
from neuron_concepts.train import SAEConfig, fit_sae


def fixture_sae() -> tuple[SparseAutoencoder, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """d=4, m=8: W_enc[k, j] = sin(k + 2j) / 2, b_enc[k] = -0.1 (k mod 3), b_pre[j] = 0.05 j,
    W_dec = W_enc^T with unit-norm columns."""
    k, j = np.arange(8)[:, None], np.arange(4)[None, :]
    W_enc = np.sin(k + 2 * j) / 2
    b_enc = -0.1 * (np.arange(8) % 3)
    b_pre = 0.05 * np.arange(4)
    W_dec = W_enc.T / np.linalg.norm(W_enc.T, axis=0, keepdims=True)
    sae = SparseAutoencoder(4, 8, l1=3e-5).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.from_numpy(W_enc))
        sae.b_enc.copy_(torch.from_numpy(b_enc))
        sae.b_pre.copy_(torch.from_numpy(b_pre))
        sae.W_dec.copy_(torch.from_numpy(W_dec))
    return sae, W_enc, b_enc, b_pre, W_dec


def test_sae_forward_and_loss_by_hand():
    sae, W_enc, b_enc, b_pre, W_dec = fixture_sae()
    x = np.array([1.0, -0.5, 0.25, 2.0])
    # by hand: z = ReLU(W_enc (x - b_pre) + b_enc), x_hat = W_dec z + b_pre
    z = np.maximum(W_enc @ (x - b_pre) + b_enc, 0)
    x_hat = W_dec @ z + b_pre
    loss = np.mean((x - x_hat) ** 2) + 3e-5 * np.abs(z).sum()
    # and the values computed independently for the research notes (CFN / DN-CBM semantics)
    np.testing.assert_allclose(z, [0, 0.817721, 1.356970, 0.764748, 0, 0, 0, 0.428816], atol=1e-6)
    np.testing.assert_allclose(x_hat, [1.562685, -0.983432, -0.602566, 1.768173], atol=1e-6)
    assert loss == pytest.approx(0.33283429, abs=1e-8)
    xt = torch.from_numpy(x)[None]
    got_z, got_x_hat = sae(xt)
    np.testing.assert_allclose(got_z[0].detach().numpy(), z, atol=1e-12)
    np.testing.assert_allclose(sae.decode(sae.encode(xt))[0].detach().numpy(), x_hat, atol=1e-12)
    np.testing.assert_allclose(got_x_hat[0].detach().numpy(), x_hat, atol=1e-12)
    out = sae.loss(xt)
    assert float(out["loss"].detach()) == pytest.approx(0.33283429, abs=1e-8)
    assert float(out["l1"].detach()) == pytest.approx(z.sum(), abs=1e-12)


def test_sae_standardisation_and_topk_by_hand():
    sae, W_enc, b_enc, b_pre, W_dec = fixture_sae()
    mean, std = np.array([0.5, 0.0, -1.0, 1.0]), np.array([2.0, 1.0, 0.5, 4.0])
    sae.set_standardization(torch.from_numpy(mean), torch.from_numpy(std))
    x = np.array([1.0, -0.5, 0.25, 2.0])
    xs = (x - mean) / std
    z = np.maximum(W_enc @ (xs - b_pre) + b_enc, 0)
    got_z, got_x_hat = sae(torch.from_numpy(x)[None])
    np.testing.assert_allclose(got_z[0].detach().numpy(), z, atol=1e-12)
    np.testing.assert_allclose(got_x_hat[0].detach().numpy(), (W_dec @ z + b_pre) * std + mean, atol=1e-12)
    loss = np.mean((xs - (W_dec @ z + b_pre)) ** 2) + 3e-5 * z.sum()  # the loss lives in the standardised space
    assert float(sae.loss(torch.from_numpy(x)[None])["loss"].detach()) == pytest.approx(loss, abs=1e-12)
    # TopK keeps the k largest ReLU activations of each row
    top = SparseAutoencoder(4, 8, kind="topk", k=2).double()
    top.load_state_dict(fixture_sae()[0].state_dict())
    zt = top.encode(torch.tensor([[1.0, -0.5, 0.25, 2.0]], dtype=torch.float64))[0].detach().numpy()
    full = np.maximum(W_enc @ (x - b_pre) + b_enc, 0)
    keep = np.argsort(-full)[:2]
    expected = np.zeros(8)
    expected[keep] = full[keep]
    np.testing.assert_allclose(zt, expected, atol=1e-12)


def test_batchtopk_keeps_k_per_row_on_average_and_learns_a_threshold():
    torch.manual_seed(0)
    sae = SparseAutoencoder(6, 24, kind="batchtopk", k=3)
    x = torch.randn(10, 6)
    z = sae.train().encode(x)
    assert int((z > 0).sum()) <= 30  # k x batch
    assert float(sae.threshold) > 0  # estimated from the smallest kept activation
    z_eval = sae.eval().encode(x)
    assert ((z_eval == 0) | (z_eval > sae.threshold)).all()


def test_decoder_columns_stay_unit_norm_and_gradient_is_projected():
    torch.manual_seed(0)
    x = torch.randn(64, 5).abs()
    sae = SparseAutoencoder(5, 20)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(10):
        loss = sae.loss(x)["loss"]
        opt.zero_grad()
        loss.backward()
        sae.project_decoder_grad()
        # the projected gradient has no component along any column
        assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(0), torch.zeros(20), atol=1e-6)
        opt.step()
        sae.constrain_decoder()
        assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(20), atol=1e-6)
    # fit_sae keeps the invariant too
    trained, history, _ = fit_sae(x, SAEConfig(expansion=4, batch_size=16, epochs=3, lr=1e-2), progress=False)
    assert torch.allclose(trained.W_dec.norm(dim=0), torch.ones(20), atol=1e-5)
    assert len(history) == 3 and history[-1]["train/loss"] < history[0]["train/loss"] * 1.5


def test_resampling_fires_and_revives_dead_latents():
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    sae = SparseAutoencoder(8, 32)
    with torch.no_grad():
        sae.b_enc[:10] = -100.0  # latents 0-9 can never fire
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:10] = True
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.loss(x)["loss"].backward()
    opt.step()
    assert resample_dead_latents(sae, x, dead, opt, torch.Generator().manual_seed(0)) == 10
    assert torch.allclose(sae.W_dec[:, :10].norm(dim=0), torch.ones(10), atol=1e-6)
    assert (opt.state[sae.W_enc]["exp_avg"][:10] == 0).all() and (opt.state[sae.W_dec]["exp_avg"][:, :10] == 0).all()
    assert (opt.state[sae.W_enc]["exp_avg"][10:] != 0).any()  # the alive latents keep their moments
    alive_norm = sae.W_enc[10:].norm(dim=1).mean()
    assert torch.allclose(sae.W_enc[:10].norm(dim=1), 0.2 * alive_norm.expand(10), rtol=1e-5)
    # each revived encoder row points along its decoder column: a high-loss input seen from the data mean
    cos = torch.nn.functional.cosine_similarity(sae.W_enc[:10], sae.W_dec[:, :10].T, dim=1)
    assert torch.allclose(cos, torch.ones(10), atol=1e-5)
    fires = sae.encode(x)[:, :10] > 0
    assert fires.any(0).all()  # every revived latent fires on its input now ...
    assert (sae.pre_activation(x.mean(0, keepdim=True))[0, :10] < 0).all()  # ... but not at the data mean
    assert (fires.float().mean(0) < 0.5).all()
    sae2 = SparseAutoencoder(8, 32)
    assert resample_dead_latents(sae2, x, dead, None, torch.Generator().manual_seed(0), max_count=3) == 3


def test_fit_sae_resampling_schedule_fires():
    """With resample_every, training really resamples the latents that stayed silent (the published code
    configures a resampler that never runs), and fewer latents end dead."""
    from neuron_concepts.model import sae_metrics

    torch.manual_seed(0)
    x = torch.randn(256, 8) * torch.linspace(0.1, 2.0, 8)
    on = SAEConfig(expansion=8, batch_size=32, epochs=8, lr=3e-2, l1=1.0, resample_every=16, resample_stop=0.75)
    sae_on, _, info = fit_sae(x, on, seed=0, progress=False)
    assert [e["step"] for e in info["resampling"]] == [16, 32, 48]
    assert sum(e["resampled"] for e in info["resampling"]) > 10
    assert all(e["resampled"] == e["dead"] for e in info["resampling"])
    off = SAEConfig(expansion=8, batch_size=32, epochs=8, lr=3e-2, l1=1.0)
    sae_off, _, info_off = fit_sae(x, off, seed=0, progress=False)
    assert info_off["resampling"] == []
    assert sae_metrics(sae_on, x)["dead_fraction"] < sae_metrics(sae_off, x)["dead_fraction"] - 0.1


def brute_force_greedy(sim: np.ndarray, k: int) -> list[int]:
    """Greedy by evaluating F(S + j) from scratch for every candidate."""
    chosen: list[int] = []
    for _ in range(k):
        values = np.array([facility_value(sim, [*chosen, j]) if j not in chosen else -np.inf
                           for j in range(len(sim))])
        chosen.append(int(np.flatnonzero(values >= values.max() - 1e-9)[0]))  # first of the (near-)ties
    return chosen


def test_facility_location_fixture_and_brute_force():
    C = np.cos(0.9 * np.outer(np.arange(1, 11), np.arange(1, 7)))  # 10 concepts in R^6
    ranking, gains = facility_location(C, 4)
    assert ranking.tolist() == [2, 0, 1, 6]  # apricot FacilityLocationSelection(4, 'cosine', 'naive')
    np.testing.assert_allclose(gains, [4.038229, 2.543177, 2.450497, 0.932876], atol=1e-6)
    sim = squared_cosine_similarity(C)
    assert gains.sum() == pytest.approx(facility_value(sim, ranking)) == pytest.approx(9.964779, abs=1e-6)
    assert ranking.tolist() == brute_force_greedy(sim, 4)
    # the greedy value is within (1 - 1/e) of the exhaustive optimum
    best = max(facility_value(sim, s) for s in itertools.combinations(range(10), 4))
    assert facility_value(sim, ranking) >= (1 - 1 / math.e) * best
    rng = np.random.default_rng(1)
    for _ in range(5):
        V = rng.normal(size=(9, 4))
        r, g = facility_location(V, 5)
        assert r.tolist() == brute_force_greedy(squared_cosine_similarity(V), 5)
        assert np.all(np.diff(g) <= 1e-12)  # submodular: gains never increase
    V = rng.normal(size=(60, 8))  # more steps than dimensions: the incremental gains stay exact
    r, g = facility_location(V, 15)
    sim = squared_cosine_similarity(V)
    assert r.tolist() == brute_force_greedy(sim, 15)
    np.testing.assert_allclose(np.cumsum(g), [facility_value(sim, r[:i + 1]) for i in range(15)], atol=1e-9)


def test_facility_location_with_modular_term_and_errors():
    C = np.cos(0.9 * np.outer(np.arange(1, 11), np.arange(1, 7)))
    modular = np.zeros(10)
    modular[9] = 100.0
    ranking, gains = facility_location(C, 3, modular=modular)
    assert ranking[0] == 9 and gains[0] == pytest.approx(100 + squared_cosine_similarity(C)[:, 9].sum())
    with pytest.raises(ValueError, match="k must be"):
        facility_location(C, 11)
    with pytest.raises(ValueError, match="NaN"):
        facility_location(np.full((3, 2), np.nan), 1)


def test_sparse_decomposition_matches_sklearn_per_sample():
    C = np.cos(0.9 * np.outer(np.arange(1, 11), np.arange(1, 7)))  # dictionary (K=10, d=6)
    h = np.array([0.9, -0.2, 0.4, 1.1, -0.7, 0.3])
    coef, intercept = sparse_decompose(h[None], C, 3)
    assert np.flatnonzero(coef[0]).tolist() == [3, 4, 8]
    np.testing.assert_allclose(coef[0, [3, 4, 8]], [-0.654708, 2.563193, -2.136821], atol=1e-6)
    assert intercept[0] == pytest.approx(0.297911, abs=1e-6)
    rng = np.random.default_rng(0)
    D = rng.normal(size=(12, 20))
    H = rng.normal(size=(15, 20)) + 0.5
    for fit_intercept in (True, False):
        coef, intercept = sparse_decompose(H, D, 4, fit_intercept)
        for i, h in enumerate(H):
            ref = OrthogonalMatchingPursuit(n_nonzero_coefs=4, fit_intercept=fit_intercept).fit(D.T, h)
            np.testing.assert_allclose(coef[i], ref.coef_, atol=1e-9)
            assert intercept[i] == pytest.approx(ref.intercept_, abs=1e-9)
            np.testing.assert_allclose(coef[i] @ D + intercept[i], ref.predict(D.T), atol=1e-9)


def _toy(task: str, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(8, 16))
    codes = rng.random((n, 8)) * (rng.random((n, 8)) < 0.4)
    H = codes @ D + 0.05 * rng.normal(size=(n, 16))
    if task == "multilabel":
        y = (codes[:, :3] > 0.3).astype(np.int64)
    elif task == "binary":
        y = (codes[:, 0] + codes[:, 1] > 0.5).astype(np.int64)
    else:
        y = np.argmax(codes[:, :3] + 0.01, axis=1)
    return D, H, y


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("features", ["reconstruction", "coefficients"])
def test_concept_bottleneck_logits_decompose_exactly(task, features):
    D, H, y = _toy(task)
    cbm = ConceptBottleneck(D, n_nonzero=4, features=features, task=task, c_search_steps=2)
    cbm.fit(H[:160], y[:160], H[160:200], y[160:200])
    assert cbm.C_ > 0 and len(cbm.search_) >= 7
    logits = cbm.decision_function(H[200:])
    proba = cbm.predict_proba(H[200:])
    pred = cbm.predict(H[200:])
    assert (pred == y[200:]).mean() > 0.7
    for cls in (None, 1):
        c = cbm.contributions(H[200:], cls)
        rows = np.arange(len(c.classes))
        np.testing.assert_allclose(c.values.sum(1) + c.residual, logits[rows, c.classes], atol=1e-9)
        np.testing.assert_allclose(c.logits, logits[rows, c.classes], atol=1e-9)
        assert ((c.values != 0).sum(1) <= 4).all()  # only the decomposition's non-zeros contribute
    if task != "multilabel":
        np.testing.assert_allclose(proba.sum(1), 1, atol=1e-9)
        assert (cbm.contributions(H[200:]).classes == pred).all()
        sk_pred = cbm.clf_.predict(cbm.transform(H[200:]))
        assert (sk_pred == pred).all()


def test_concept_bottleneck_fixed_c_and_errors():
    D, H, y = _toy("multiclass")
    cbm = ConceptBottleneck(D, n_nonzero=3, C=1.0).fit(H, y)
    assert cbm.C_ == 1.0 and cbm.search_ == []
    with pytest.raises(ValueError, match=r"embeddings must be \(N, 16\)"):
        cbm.predict(H[:, :5])
    with pytest.raises(ValueError, match="pass H_val"):
        ConceptBottleneck(D, n_nonzero=3).fit(H, y)
    with pytest.raises(RuntimeError, match="fit first"):
        ConceptBottleneck(D).predict(H)
    with pytest.raises(ValueError, match="class index"):
        cbm.contributions(H[:2], 7)


# --------------------------------------------------------------------------- whitened input (sae.whiten, ours)


def planted_features(n: int = 500, seed: int = 0, scales: tuple[float, ...] = (30, 3, 1, 0.3, 0.1, 0.03)
                     ) -> torch.Tensor:
    """Correlated features (N, 6) off the origin whose principal standard deviations are about `scales` (by default
    their variances span six orders of magnitude)."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    scales = torch.tensor(scales, dtype=torch.float64)
    return (torch.randn(n, 6, generator=g, dtype=torch.float64) * scales) @ basis.T + 5.0


def covariance(x: torch.Tensor) -> torch.Tensor:
    c = x - x.mean(0)
    return c.T @ c / (len(x) - 1)


def test_whitening_gives_identity_covariance_and_inverts():
    from neuron_concepts.sae import whitening

    x = planted_features()
    mean, P, P_pinv, info = whitening(x, eps=0.0)
    assert info["kept"] == 6 and info["dropped"] == 0
    xw = (x - mean) @ P
    torch.testing.assert_close(covariance(xw), torch.eye(6, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(xw @ P_pinv + mean, x, atol=1e-9, rtol=0)
    # the default eps (1e-6 of the largest eigenvalue): direction j gets variance lambda_j / (lambda_j + eps lambda_max),
    # here 0.5 for the weakest (lambda 1e-6 of the largest), near 1 for the others
    mean, P, P_pinv, info = whitening(x)
    var = torch.diagonal(covariance((x - mean) @ P))
    lam = torch.linalg.eigvalsh(covariance(x))
    torch.testing.assert_close(var, lam / (lam + 1e-6 * lam.max()), atol=1e-9, rtol=0)
    assert info["eps"] == 1e-6 and 0.4 < var.min() < 0.6 and var[2:].min() > 0.99
    torch.testing.assert_close(((x - mean) @ P) @ P_pinv + mean, x, atol=1e-9, rtol=0)


def test_whitening_drops_the_null_directions_of_a_rank_deficient_covariance():
    from neuron_concepts.sae import whitening

    base = planted_features()[:, :4]
    x = torch.cat([base, torch.full((len(base), 1), 2.0), base[:, :1] - base[:, 1:2]], dim=1)  # constant, dependent
    mean, P, P_pinv, info = whitening(x, eps=0.0)
    assert (info["kept"], info["dropped"]) == (4, 2)
    xw = (x - mean) @ P
    kept = torch.diagonal(covariance(xw)) > 0.5
    assert int(kept.sum()) == 4
    torch.testing.assert_close(covariance(xw)[kept][:, kept], torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    assert xw[:, ~kept].abs().max() < 1e-9  # the dropped directions read zero, not amplified rounding noise
    torch.testing.assert_close(xw @ P_pinv + mean, x, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="no variance"):
        whitening(torch.ones(5, 3))


def test_whitened_sae_encodes_in_the_whitened_space_and_decodes_to_features():
    """An autoencoder whose latents are the positive and negative parts of the whitened input reproduces the raw
    features: decode maps the whitened reconstruction back (x = x'' @ P^+ + mean)."""
    from neuron_concepts.sae import whitening

    x = planted_features(200)
    mean, P, P_pinv, _ = whitening(x)
    sae = SparseAutoencoder(6, 12, whiten=True).double()
    eye = torch.eye(6, dtype=torch.float64)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=1))
        sae.b_enc.zero_()
        sae.b_pre.zero_()
    sae.set_whitening(mean, P, P_pinv)
    z, recon = sae(x)
    xw = (x - mean) @ P
    torch.testing.assert_close(z, torch.relu(torch.cat([xw, -xw], dim=1)))
    torch.testing.assert_close(recon, x, atol=1e-9, rtol=0)
    torch.testing.assert_close(sae.standardize(x), xw)
    with pytest.raises(ValueError, match="whiten=False"):
        SparseAutoencoder(6, 12).set_whitening(mean, P, P_pinv)


def test_fit_sae_whitened_input_saves_and_loads(tmp_path):
    from medimg_core.config import ConfigError
    from neuron_concepts.sae import load_sae, save_sae

    x = planted_features(256, scales=(10, 3, 1, 0.3, 0.5, 2)).float()  # variances within 1e-3 of the largest
    sae, _, info = fit_sae(x, SAEConfig(expansion=2, batch_size=64, epochs=3, whiten=True), progress=False)
    assert info["whitening"]["kept"] == 6 and info["whitening"]["eps"] == 1e-6
    xw = sae.standardize(x).double()
    # eps damps the weakest direction (variance 9e-4 of the largest) to lambda / (lambda + eps lambda_max) = 0.9989
    torch.testing.assert_close(covariance(xw), torch.eye(6, dtype=torch.float64), atol=2e-3, rtol=0)
    save_sae(sae, tmp_path)
    loaded = load_sae(tmp_path)
    assert loaded.whiten and "whiten_matrix" in loaded.state_dict()
    for a, b in zip(sae(x), loaded(x), strict=True):
        assert torch.equal(a, b)
    # an autoencoder without whitening keeps the earlier keys, and a sae.json without "whiten" still loads
    plain, _, info = fit_sae(x, SAEConfig(expansion=2, batch_size=64, epochs=1), progress=False)
    assert "whitening" not in info and "whiten_matrix" not in plain.state_dict()
    save_sae(plain, tmp_path)
    conf = json.loads((tmp_path / "sae.json").read_text())
    del conf["whiten"]
    (tmp_path / "sae.json").write_text(json.dumps(conf))
    assert torch.equal(load_sae(tmp_path).encode(x), plain.encode(x))
    # whitening and standardisation are exclusive, in a config and in a config changed after it was built
    with pytest.raises(ConfigError, match="whiten: exclusive with sae.standardize"):
        SAEConfig(whiten=True, standardize=True)
    cfg = SAEConfig(standardize=True)
    cfg.whiten = True
    with pytest.raises(ConfigError, match="exclusive"):
        fit_sae(x, cfg, progress=False)


def test_whiten_and_standardize_refused_together_when_the_config_loads():
    from medimg_core.config import ConfigError, load_config
    from neuron_concepts.config import NeuronConceptsConfig

    with pytest.raises(ConfigError, match=r"^sae\.whiten: exclusive with sae\.standardize"):
        load_config(NeuronConceptsConfig, None, {"sae.whiten": "true", "sae.standardize": "true"})
    with pytest.raises(ConfigError, match=r"sae\.whiten_eps"):
        load_config(NeuronConceptsConfig, None, {"sae.whiten_eps": "-1"})
