"""Hand-computed cases and reference comparisons for the pruning math."""
import torch
import pytest

from polyprune.masks import Pattern, build_pruned, nm_pruned, parse_pattern, topk_pruned
from polyprune.methods import Spec, get_method
from polyprune.methods.sparsegpt import sparsegpt_prune
from polyprune.methods.wanda import variant_pruned
from polyprune.stats import ModuleStats, SetStats, column_norms
from polyprune.errors import UserError


def stats_from(x: torch.Tensor, kinds=("sqnorm",)) -> SetStats:
    st = ModuleStats(x.shape[-1], frozenset(kinds))
    st.add(x)
    return SetStats({"target": st})


def test_wanda_hand_computed():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    X = torch.tensor([[100.0, 10.0, 1.0, 0.1]])
    # scores |W|·|x| = [100, 20, 3, 0.4] → the two lowest (cols 2, 3) go
    res = get_method("wanda").fn(W, stats_from(X), Spec(0.5))
    assert (W * res.kept).tolist() == [[1.0, 2.0, 0.0, 0.0]]


def test_magnitude_would_keep_the_opposite():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    res = get_method("magnitude").fn(W, None, Spec(0.5, options={"reference_threshold": False}))
    assert (W * res.kept).tolist() == [[0.0, 0.0, 3.0, 4.0]]


def test_magnitude_reference_threshold_prunes_one_more():
    W = torch.arange(1.0, 11.0).reshape(2, 5)
    ref = get_method("magnitude").fn(W, None, Spec(0.5))  # locuslab: <= sorted[int(10·0.5)]
    exact = get_method("magnitude").fn(W, None, Spec(0.5, options={"reference_threshold": False}))
    assert int((~ref.kept).sum()) == 6 and int((~exact.kept).sum()) == 5


def test_wanda_24_hand_computed():
    W = torch.tensor([[4.0, -1.0, 2.0, 3.0, 1.0, 1.0, -5.0, 0.5]])
    X = torch.tensor([[1.0, 1.0, 1.0, 1.0, 10.0, 1.0, 1.0, 1.0]])
    # group 1 scores [4,1,2,3] → prune cols 1,2; group 2 scores [10,1,5,0.5] → prune cols 5,7
    res = get_method("wanda").fn(W, stats_from(X), Spec(0.5, parse_pattern("2:4")))
    assert res.kept.tolist() == [[True, False, False, True, True, False, True, False]]


def test_wanda_statistic_is_mean_over_samples_of_token_sums():
    st = ModuleStats(2, frozenset({"sqnorm"}))
    st.add(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))  # sample 1: Σx² = [10, 4]
    st.add(torch.tensor([[2.0, 2.0]]))  # sample 2: [4, 4]
    assert torch.allclose(st.scaler_row, torch.tensor([7.0, 4.0]))
    assert st.ntokens == 3 and st.nsamples == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cols", [640, 1024, 2048])
@pytest.mark.parametrize("always_pad", [False, True])
def test_column_norms_are_the_references_bits(cols, dtype, always_pad, monkeypatch):
    """The padded copy (for cache-aliasing row strides) sums each column in the same order as the
    references' torch.norm(x.t().float(), dim=1): identical bits, on batch slices as the hooks see them
    (1024 / 2048 columns take the copy; ``always_pad`` sends every width through it)."""
    from polyprune import stats
    if always_pad:
        monkeypatch.setattr(stats, "ALIASING_STRIDE", 4)
    g = torch.Generator().manual_seed(cols)
    batch = (torch.randn(3, 257, cols, generator=g) * 4).to(dtype)
    threads = torch.get_num_threads()
    copies = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: copies.append(a) or real_empty(*a, **k))
    try:
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            for b in range(3):
                x = batch[b].reshape(-1, cols)
                ref = torch.norm(x.t().float(), p=2, dim=1)
                assert torch.equal(column_norms(x), ref), (n, b)
    finally:
        torch.set_num_threads(threads)
    assert bool(copies) == (always_pad or cols * 4 % 2048 == 0)
    # a plain sum of squares differs in the last bits: the test can tell the orders apart
    x = batch[0].float()
    assert not torch.equal((x * x).sum(0).sqrt(), torch.norm(x.t(), p=2, dim=1))


def test_hessian_statistic():
    st = ModuleStats(2, frozenset({"hessian"}))
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0], [0.0, 1.0]])
    st.add(a)
    st.add(b)
    X = torch.cat([a, b])
    assert torch.allclose(st.H, 2 / 2 * X.t() @ X, atol=1e-6)  # (2/n_samples) Σ xxᵀ


def test_moments_match_torch():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 3, generator=g) * 3 + 1 for _ in range(4)]
    st = ModuleStats(3, frozenset({"moments"}))
    for x in xs:
        st.add(x)
    allx = torch.cat(xs)
    assert torch.allclose(st.mean.float(), allx.mean(0), atol=1e-6)
    assert torch.allclose(st.variance, allx.var(0, unbiased=False), atol=1e-5)


def test_row_sparsity_is_exact_and_stable():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5]])
    pruned = topk_pruned(scores, 0.4, "row")  # k = 2: col 4, then the first of the ties
    assert pruned.tolist() == [[True, False, False, False, True]]
    g = torch.Generator().manual_seed(0)
    s = torch.rand(16, 30, generator=g)
    for sp in (0.1, 0.5, 0.73):
        assert ((topk_pruned(s, sp, "row")).sum(1) == int(30 * sp)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lowest_k_equals_the_first_k_of_a_stable_sort(dtype):
    """Selection + tie fix-up gives exactly the stable sort's first k: heavy ties, -0.0, NaN, k = 0 / n."""
    from polyprune.masks import lowest_k
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        rows, n = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))
        s = torch.randint(0, 4, (rows, n), generator=g).float() if trial % 2 else torch.randn(rows, n, generator=g)
        if trial % 7 == 0:
            s[0, 0] = -0.0
        if trial % 5 == 0:
            s[-1, int(torch.randint(0, n, (1,), generator=g))] = float("nan")
        s = s.to(dtype)
        k = int(torch.randint(0, n + 1, (1,), generator=g))
        want = torch.zeros(rows, n, dtype=torch.bool).scatter_(1, torch.sort(s, dim=-1, stable=True)[1][:, :k], True)
        assert torch.equal(lowest_k(s, k), want), (s, k)
    tied = torch.tensor([[1.0, 0.0, 1.0, 1.0, 2.0, 1.0]])
    assert lowest_k(tied, 3).tolist() == [[True, True, True, False, False, False]]


def test_lowest_k_in_row_blocks_is_the_same(monkeypatch):
    """Large matrices go through in blocks of rows (bounded temporaries): same mask, NaN rows included."""
    from polyprune import masks
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (37, 16), generator=g).float()
    s[3, :10] = float("nan")  # the 9th lowest of row 3 is NaN: the sort fallback, for its block only
    want = torch.zeros(37, 16, dtype=torch.bool).scatter_(1, torch.sort(s, dim=-1, stable=True)[1][:, :9], True)
    assert torch.equal(masks.lowest_k(s, 9), want)
    monkeypatch.setattr(masks, "ROW_BLOCK_ELEMENTS", 5 * 16)  # blocks of 5 rows, the last one of 2
    assert torch.equal(masks.lowest_k(s, 9), want)


def test_nm_exact_per_group():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(8, 16, generator=g)
    p = nm_pruned(s, 2, 4).reshape(8, 4, 4)
    assert (p.sum(-1) == 2).all()
    p48 = nm_pruned(s, 4, 8).reshape(8, 2, 8)
    assert (p48.sum(-1) == 4).all()


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "x", "2-4"])
def test_bad_patterns(text):
    with pytest.raises(UserError):
        parse_pattern(text)


def test_nm_not_divisible():
    with pytest.raises(UserError, match="not divisible"):
        build_pruned(torch.rand(2, 6), 0.5, Pattern(2, 4))


def test_use_variant_reaches_matrix_sparsity():
    g = torch.Generator().manual_seed(0)
    metric = torch.rand(32, 64, generator=g) ** 3
    pruned = variant_pruned(metric, 0.5)
    assert abs(float(pruned.float().mean()) - 0.5) <= 0.01
    assert pruned.sum(1).float().std() > 0  # rows get different sparsities


def test_random_is_seeded_per_matrix():
    W = torch.randn(8, 16)
    a = get_method("random").fn(W, None, Spec(0.5, name="a.weight", seed=1)).kept
    b = get_method("random").fn(W, None, Spec(0.5, name="a.weight", seed=1)).kept
    c = get_method("random").fn(W, None, Spec(0.5, name="b.weight", seed=1)).kept
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ((~a).sum(1) == 8).all()


# --- SparseGPT against a straightforward reference ------------------------------------------

def obs_reference(W, H, sparsity, blocksize, percdamp=0.01, prunen=0, prunem=0):
    """Textbook OBS: explicit inverse of the remaining columns' Hessian at every step (float64)."""
    W = W.double().clone()
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    pruned = torch.zeros_like(W, dtype=torch.bool)

    def d2(j):  # [H_{j:,j:}]⁻¹ at (0,0): the squared diagonal of the upper Cholesky factor of H⁻¹
        return torch.linalg.inv(H[j:, j:])[0, 0]

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if prunen == 0:
            dd = torch.stack([d2(j) for j in range(i1, i2)])
            tmp = W[:, i1:i2] ** 2 / dd.reshape(1, -1)
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            pruned[:, i1:i2] = tmp <= thresh
        for j in range(i1, i2):
            if prunen and (j - i1) % prunem == 0:
                dd = torch.stack([d2(c) for c in range(j, j + prunem)])
                tmp = W[:, j:j + prunem] ** 2 / dd.reshape(1, -1)
                idx = torch.topk(tmp, prunen, dim=1, largest=False)[1]
                pruned[:, j:j + prunem].scatter_(1, idx, True)
            Hinv = torch.linalg.inv(H[j:, j:])
            q = W[:, j].clone()
            q[pruned[:, j]] = 0
            err = (W[:, j] - q) / Hinv[0, 0]
            W[:, j:] -= err.unsqueeze(1) * Hinv[0, :].unsqueeze(0)
            W[:, j] = q
    return pruned, W.float()


@pytest.mark.parametrize("pattern", [(0, 0), (2, 4)])
def test_sparsegpt_matches_straightforward_obs(pattern):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 12, generator=g)
    X = torch.randn(40, 12, generator=g)
    X[:, 3] = 0  # a dead input
    st = ModuleStats(12, frozenset({"hessian"}))
    for row in X.split(8):
        st.add(row)
    pruned, Wn = sparsegpt_prune(W, st.H, 0.5, *pattern, blocksize=4)
    ref_pruned, ref_W = obs_reference(W, st.H, 0.5, 4, prunen=pattern[0], prunem=pattern[1])
    assert torch.equal(pruned, ref_pruned)
    assert torch.allclose(Wn, ref_W, atol=1e-4)
    assert (Wn[pruned] == 0).all() and (Wn[:, 3] == 0).all()
    # OBS reconstruction beats plain zeroing on the calibration inputs
    err_obs = ((X @ W.t() - X @ Wn.t()) ** 2).sum()
    err_zero = ((X @ W.t() - X @ (W * ~pruned).t()) ** 2).sum()
    assert err_obs < err_zero


def test_sparsegpt_exact_count_option():
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(4, 8, generator=g), torch.randn(20, 8, generator=g)
    st = ModuleStats(8, frozenset({"hessian"}))
    st.add(X)
    pruned, _ = sparsegpt_prune(W, st.H, 0.5, blocksize=8, reference_threshold=False)
    assert int(pruned.sum()) == 16


def test_sparsegpt_singular_hessian_recovers_or_names_layer():
    H = torch.zeros(4, 4)
    H[0, 0] = 1.0
    H[1, 1] = -5.0  # not positive definite even with damping
    with pytest.raises(UserError, match="layer.q"):
        sparsegpt_prune(torch.randn(2, 4), H, 0.5, name="layer.q")


def test_contrastive_uses_named_roles():
    W = torch.ones(1, 4)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    z = torch.tensor([[1.0, 1.0, 10.0, 10.0]])
    sx, sz = stats_from(x)["target"], stats_from(z)["target"]
    m = get_method("wanda-contrastive")
    # scores x²/z = [1, 4, 0.9, 1.6] → prune cols 0 and 2
    kept = m.fn(W, SetStats({"target": sx, "contrast": sz}), Spec(0.5)).kept
    assert kept.tolist() == [[False, True, False, True]]
    # swapping the names swaps the roles: z²/x = [1, 0.5, 33.3, 25] → prune cols 0 and 1
    kept2 = m.fn(W, SetStats({"target": sz, "contrast": sx}), Spec(0.5)).kept
    assert kept2.tolist() == [[False, False, True, True]]
