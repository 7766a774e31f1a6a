"""GPTQ and joint SparseGPT+GPTQ on single Linears: reference comparison, exact grid values."""
import pytest
import torch

from polyprune.errors import UserError
from polyprune.masks import parse_pattern
from polyprune.methods import Spec, get_method
from polyprune.methods.gptq import gptq_quantize
from polyprune.quant import codes, expand_groups, find_params, on_grid, quant_spec, quantize, rtn
from polyprune.stats import ModuleStats, SetStats


def hessian_stats(X: torch.Tensor) -> SetStats:
    st = ModuleStats(X.shape[-1], frozenset({"hessian"}))
    for x in X:
        st.add(x)
    return SetStats({"target": st})


def problem(rows=16, cols=64, n=8, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    X = torch.randn(n, t, cols, generator=g) @ mix  # correlated inputs
    return W, X


def obs_reference(W, H, spec, percdamp=0.01):
    """Textbook OBS quantisation: column by column with the explicit inverse Hessian, removing
    each quantised column from H⁻¹ by Gaussian elimination (no Cholesky, no blocks)."""
    W = W.clone().double()
    H = H.clone().double()
    cols = W.shape[1]
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    gs = spec.group_size or cols
    for i in range(cols):
        if i % gs == 0:
            s, z = find_params(W[:, i:i + gs].float(), spec)
            s, z = s.double(), z.double()
        q = quantize(W[:, i:i + 1], s, z, spec.maxq).flatten()
        Q[:, i] = q
        err = (W[:, i] - q) / Hinv[i, i]
        W[:, i:] -= err.unsqueeze(1) * Hinv[i, i:].unsqueeze(0)
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return Q.float()


def recon_error(W, Q, X):
    x = X.reshape(-1, X.shape[-1])
    return float(((x @ (W - Q).t()) ** 2).sum())


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 32, False), (8, -1, True), (3, 16, False)])
def test_gptq_matches_textbook_obs_and_lies_on_grid(bits, group, sym):
    W, X = problem()
    st = hessian_stats(X)
    spec = quant_spec(bits, group, sym, W.shape[1])
    # blocksize 16 < group 32: groups start at block boundaries, so the reference's block-start grid
    # equals the textbook's current-weights grid only when the group starts a block; use blocksize = group
    out = gptq_quantize(W, st.target.H, spec, blocksize=spec.group_size or 128)
    ref = obs_reference(W, st.target.H, spec)
    same = float(torch.isclose(out["weight"], ref, rtol=1e-4, atol=1e-6).float().mean())
    assert same > 0.97, same  # equal up to float rounding (fp32 vs fp64) and a few borderline codes
    e_ours, e_ref, e_rtn = recon_error(W, out["weight"], X), recon_error(W, ref, X), recon_error(W, rtn(W, spec)[0], X)
    assert e_ours == pytest.approx(e_ref, rel=0.05)
    assert e_ours < 0.8 * e_rtn  # the point of GPTQ: much lower output error than round-to-nearest
    assert on_grid(out["weight"], out["scale"], out["zero"], spec)
    c = codes(out["weight"], out["scale"], out["zero"], spec)
    assert int(c.max()) <= spec.maxq
    if sym:
        assert torch.all(out["zero"] == 2 ** (bits - 1))


def test_quantiser_hand_computed():
    spec = quant_spec(2, None, False)  # 2 bits, asym: grid from min(-1) to max(2): scale 1, zero 1
    x = torch.tensor([[-1.0, 0.4, 0.6, 2.0, 5.0]])
    s, z = find_params(x[:, :4], spec)
    assert s.item() == 1.0 and z.item() == 1.0
    assert quantize(x, s, z, spec.maxq).tolist() == [[-1.0, 0.0, 1.0, 2.0, 2.0]]  # 5 clamps to the top
    sym = quant_spec(4, None, True)  # xmax = max(|-3|, 1) = 3 → range [-3, 3], scale 6/15, zero 8
    s, z = find_params(torch.tensor([[-3.0, 1.0]]), sym)
    assert s.item() == pytest.approx(0.4) and z.item() == 8.0


def test_act_order_keeps_original_groups_and_the_grid():
    W, X = problem(seed=1)
    st = hessian_stats(X)
    spec = quant_spec(4, 16, True, W.shape[1])
    out = gptq_quantize(W, st.target.H, spec, blocksize=16, act_order=True)
    assert on_grid(out["weight"], out["scale"], out["zero"], spec)
    # static groups: scales come from the untouched weights of each group in column order
    for g in range(4):
        s, _ = find_params(W[:, g * 16:(g + 1) * 16], spec)
        assert torch.equal(out["scale"][:, g:g + 1], s)
    assert recon_error(W, out["weight"], X) < recon_error(W, rtn(W, spec)[0], X)


def test_gptq_method_keeps_everything_and_reports_info():
    W, X = problem()
    res = get_method("gptq").fn(W, hessian_stats(X), Spec(0.5, options={"bits": 8, "group_size": 32}))
    assert bool(res.kept.all())
    assert res.info["bits"] == 8 and res.info["group_size"] == 32 and res.info["scale"].shape == (16, 2)
    assert float((res.weight - W).abs().max()) < 0.05  # 8 bits: close to the original
    assert not torch.equal(res.weight, W)


def test_dead_inputs_get_zero_weights():
    W, X = problem()
    X[..., 3] = 0
    out = gptq_quantize(W, hessian_stats(X).target.H, quant_spec(4, 32, True))
    assert torch.all(out["weight"][:, 3] == 0)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", 0.5)])
def test_sparsegpt_gptq_prunes_and_quantises(pattern, sparsity):
    W, X = problem()
    pat = parse_pattern(pattern)
    res = get_method("sparsegpt-gptq").fn(W, hessian_stats(X), Spec(sparsity, pat, {"bits": 4, "group_size": 32}))
    spec = quant_spec(4, 32, True)
    assert torch.all(res.weight[~res.kept] == 0)
    assert on_grid(res.weight, res.info["scale"], res.info["zero"], spec)
    if pat.structured:
        assert torch.all((~res.kept).reshape(16, -1, 4).sum(-1) == 2)
    else:
        assert abs(float((~res.kept).float().mean()) - 0.5) < 0.05
    # joint quantisation costs little beyond pruning alone
    sg = get_method("sparsegpt").fn(W, hessian_stats(X), Spec(sparsity, pat))
    assert recon_error(W, res.weight, X) < 1.5 * recon_error(W, sg.weight, X)


def test_bad_quantisation_settings():
    with pytest.raises(UserError, match="bits"):
        quant_spec(5, 128)
    with pytest.raises(UserError, match="does not divide"):
        quant_spec(4, 48, columns=64)
    with pytest.raises(UserError, match="group size"):
        quant_spec(4, -5)


def test_ragged_last_group_as_the_reference():
    W, X = problem()  # 64 columns, groups of 48: one full group and one of 16
    res = get_method("gptq").fn(W, hessian_stats(X), Spec(0.5, options={"group_size": 48}))
    spec = quant_spec(4, 48, True)
    assert res.info["scale"].shape == (16, 2)
    assert on_grid(res.weight, res.info["scale"], res.info["zero"], spec)
    s, _ = find_params(W[:, :48], spec)  # the first group's grid comes from the untouched weights
    assert torch.equal(res.info["scale"][:, :1], s)


def test_expand_groups():
    t = torch.tensor([[1.0, 2.0]])
    assert expand_groups(t, 4, 2).tolist() == [[1.0, 1.0, 2.0, 2.0]]
