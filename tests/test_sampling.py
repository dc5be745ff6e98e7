"""The native sampler chain against plain numpy implementations written here (omniad_edge.sampling)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("omniad_edge._native", reason="native module not built (pip install -e .)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omniad_edge.sampling import Sampler, log_softmax_at  # noqa: E402

FAST = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
QWEN_V = 151936


# ---- numpy references ----------------------------------------------------------------------------------------------

def np_penalise(x, previous, p):
    x = x.astype(np.float64).copy()
    for t in set(int(v) for v in previous if v >= 0):
        x[t] = x[t] / p if x[t] > 0 else x[t] * p
    return x


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x[np.isfinite(x)].max()
    return x - m - np.log(np.exp(x - m).sum())


def np_kept(x, temperature, top_k=0, top_p=1.0, min_p=0.0, slack=0.0):
    """Token ids the chain may draw from (one row). slack > 0 widens the cuts for float rounding at the margins."""
    y = np.asarray(x, np.float64) / temperature
    order = np.lexsort((np.arange(len(y)), -y))        # value descending, lower id first
    order = order[np.isfinite(y[order])]
    p = np.exp(y[order] - y[order[0]])
    n = len(order)
    if top_k:
        n = min(n, top_k)
    if top_p < 1:  # smallest head whose share reaches top_p (slack: a little more)
        cum = np.cumsum(p[:n]) / p[:n].sum()
        n = min(n, int(np.searchsorted(cum, min(1.0, top_p * (1 + slack)))) + 1)
    if min_p:
        n = max(1, min(n, int((p[:n] >= min_p * (1 - slack)).sum())))
    return order[:n], p[:n] / p[:n].sum()


def packbits(mask_bool):
    """(B, V) bool -> (B, ceil(V/32)) uint32 in llguidance's layout, written independently of the native code."""
    b, v = mask_bool.shape
    padded = np.zeros((b, (v + 31) // 32 * 32), bool)
    padded[:, :v] = mask_bool
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint32)


def logits(b, v, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal((b, v)) * scale).astype(np.float32)


# ---- greedy: exact ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("v", [1, 7, 33, 1000, QWEN_V])
def test_greedy_matches_numpy_argmax(dtype, v):
    x = logits(3, v, seed=v).astype(dtype)
    x[1, v // 2] = x[1].max()          # a tie: the lower id wins, like numpy
    ids, lps = Sampler().sample(x)
    ref = np.argmax(x.astype(np.float32), axis=1)
    assert ids.dtype == np.int64 and lps.dtype == np.float32
    assert np.array_equal(ids, ref)
    assert np.array_equal(Sampler().sample_ids(x), ref)
    want = [np_log_softmax(x[b].astype(np.float32))[ref[b]] for b in range(3)]
    np.testing.assert_allclose(lps, want, atol=2e-5)


@pytest.mark.parametrize("kind", ["bits", "bool", "int32"])
def test_greedy_with_allowed_mask(kind):
    x = logits(4, 5000, seed=1)
    allowed = np.random.default_rng(2).random((4, 5000)) < 0.05
    allowed[3, :] = False
    allowed[3, 4999] = True            # only the last token, in the partial last word
    mask = {"bits": packbits(allowed), "bool": allowed, "int32": packbits(allowed).view(np.int32)}[kind]
    ids, lps = Sampler().sample(x, allowed_mask=mask)
    masked = np.where(allowed, x, -np.inf)
    assert np.array_equal(ids, masked.argmax(axis=1))
    assert np.array_equal(Sampler().sample_ids(x, allowed_mask=mask), ids)  # the no-copy greedy path
    want = [np_log_softmax(masked[b])[ids[b]] for b in range(4)]
    np.testing.assert_allclose(lps, want, atol=2e-5)


@FAST
@given(seed=st.integers(0, 2**32 - 1), penalty=st.floats(0.5, 3.0), n_prev=st.integers(0, 30),
       f16=st.booleans())
def test_greedy_with_penalty_and_mask_matches_numpy(seed, penalty, n_prev, f16):
    rng = np.random.default_rng(seed)
    v = int(rng.integers(2, 300))
    x = (rng.standard_normal(v) * 2).astype(np.float16 if f16 else np.float32)
    prev = rng.integers(-1, v, n_prev)
    allowed = rng.random(v) < 0.7
    allowed[rng.integers(v)] = True
    ids, lps = Sampler(repetition_penalty=penalty).sample(x, previous=prev, allowed_mask=packbits(allowed[None])[0])
    ref = np.where(allowed, np_penalise(x.astype(np.float32), prev, np.float32(penalty)), -np.inf)
    assert ids[0] == ref.argmax() or ref[ids[0]] == ref.max()
    assert abs(lps[0] - np_log_softmax(ref)[ids[0]]) < 1e-4


def test_previous_accepts_ragged_lists():
    x = np.zeros((2, 6), np.float32)
    x[:, 2] = 5
    x[:, 3] = 4
    ids = Sampler(repetition_penalty=100.0).sample_ids(x, previous=[[2], [0, 1]])
    assert ids.tolist() == [3, 2]


# ---- sampling: distributions with fixed seeds ------------------------------------------------------------------------

PROBS = np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
N = 40_000


def draw(sampler, x, n=N):
    return sampler.sample_ids(np.ascontiguousarray(np.broadcast_to(x, (n, len(x))), dtype=np.float32))


CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}  # p = 0.001 critical values


def chi_square(ids, probs, v):
    counts = np.bincount(ids, minlength=v)
    expected = probs * len(ids)
    keep = expected > 0
    assert counts[~keep].sum() == 0, f"drew excluded tokens {np.nonzero(counts * ~keep)[0]}"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("settings_, expected", [
    (dict(temperature=1.0), PROBS),
    (dict(temperature=0.5), PROBS**2 / (PROBS**2).sum()),
    (dict(temperature=1.0, top_k=3), np.r_[PROBS[:3] / PROBS[:3].sum(), [0, 0, 0]]),
    (dict(temperature=1.0, top_p=0.7), np.r_[PROBS[:3] / PROBS[:3].sum(), [0, 0, 0]]),  # 0.40+0.25 < 0.7
    (dict(temperature=1.0, min_p=0.5), np.r_[PROBS[:2] / PROBS[:2].sum(), [0, 0, 0, 0]]),  # keeps p >= 0.2
    (dict(temperature=1.0, top_k=4, top_p=0.8), np.r_[PROBS[:3] / PROBS[:3].sum(), [0, 0, 0]]),  # 0.8 of 0.9
])
def test_sampled_frequencies(settings_, expected):
    x = np.log(PROBS).astype(np.float32)
    ids = draw(Sampler(seed=123, **settings_), x)
    stat, dof = chi_square(ids, expected, 6)
    assert stat < CHI2_999[dof], (stat, dof)


@pytest.mark.parametrize("case", range(12))
def test_frequencies_match_numpy_chain_on_random_settings(case):
    # Catches tokens wrongly dropped (a subset check cannot): every kept token must show up at its rate.
    rng = np.random.default_rng(100 + case)
    v = int(rng.integers(3, 9))
    x = (rng.standard_normal(v) * rng.uniform(0.5, 2.5)).astype(np.float32)
    cfg = dict(temperature=float(rng.uniform(0.5, 2.0)), top_k=int(rng.integers(0, v + 1)),
               top_p=float(rng.choice([1.0, rng.uniform(0.3, 0.99)])), min_p=float(rng.choice([0.0, rng.uniform(0, 0.3)])))
    kept, probs = np_kept(x, cfg["temperature"], cfg["top_k"], cfg["top_p"], cfg["min_p"])
    expected = np.zeros(v)
    expected[kept] = probs
    ids = draw(Sampler(seed=case, **cfg), x, n=20_000)
    stat, dof = chi_square(ids, expected, v)
    assert dof == 0 or stat < CHI2_999[dof], (stat, dof, cfg)


def test_logprobs_are_before_truncation():
    x = np.log(PROBS).astype(np.float32)
    ids, lps = Sampler(temperature=1.0, top_k=2, seed=0).sample(np.tile(x, (200, 1)))
    np.testing.assert_allclose(lps, np.log(PROBS[ids]), atol=1e-5)
    ids, lps = Sampler(temperature=2.0, seed=0).sample(np.tile(x, (50, 1)))
    np.testing.assert_allclose(lps, np_log_softmax(np.log(PROBS) / 2)[ids], atol=1e-5)


@FAST
@given(seed=st.integers(0, 2**32 - 1), top_k=st.integers(0, 20), top_p=st.floats(0.05, 1.0),
       min_p=st.floats(0.0, 0.9), temperature=st.floats(0.2, 3.0), v=st.integers(2, 3000))
def test_truncation_never_draws_excluded_tokens(seed, top_k, top_p, min_p, temperature, v):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(v) * rng.uniform(0.1, 6)).astype(np.float32)
    x[rng.integers(v, size=v // 4)] = x.max()  # ties at the top
    allowed = rng.random(v) < 0.8
    allowed[int(rng.integers(v))] = True
    ids = draw(Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed), x, n=300)
    ids_masked = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed).sample_ids(
        np.tile(x, (300, 1)), allowed_mask=np.tile(allowed, (300, 1)))
    kept, _ = np_kept(x, temperature, top_k, top_p, min_p, slack=1e-4)
    kept_masked, _ = np_kept(np.where(allowed, x, -np.inf), temperature, top_k, top_p, min_p, slack=1e-4)
    assert set(ids.tolist()) <= set(kept.tolist())
    assert set(ids_masked.tolist()) <= set(kept_masked.tolist())


def test_top_p_on_full_vocabulary():
    x = logits(1, QWEN_V, seed=5, scale=2.5)[0]
    x[:20] += 12  # a realistic head
    kept, probs = np_kept(x, 0.8, top_p=0.9, slack=1e-4)
    s = Sampler(temperature=0.8, top_p=0.9, seed=9)
    got = np.concatenate([s.sample_ids(np.tile(x, (8, 1))) for _ in range(50)])
    assert set(got.tolist()) <= set(kept.tolist())
    ids, lps = Sampler(temperature=0.8, top_p=0.9, seed=9).sample(x)
    assert abs(lps[0] - np_log_softmax(x / 0.8)[ids[0]]) < 1e-4


def test_seeds_repeat_and_reset_replays():
    x = logits(16, 2000, seed=3)
    a, b = Sampler(temperature=1.0, top_p=0.95, seed=7), Sampler(temperature=1.0, top_p=0.95, seed=7)
    first = [a.sample_ids(x) for _ in range(5)]
    assert all(np.array_equal(f, b.sample_ids(x)) for f in first)
    a.reset()
    assert np.array_equal(a.sample_ids(x), first[0])
    a.reset(8)
    assert not all(np.array_equal(a.sample_ids(x), f) for f in first[:1])
    assert not np.array_equal(Sampler(temperature=1.0, seed=1).sample_ids(x),
                              Sampler(temperature=1.0, seed=2).sample_ids(x))


# ---- log_softmax_at --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_log_softmax_at(dtype):
    x = logits(3, 1000, seed=4).astype(dtype)
    ids = np.array([0, 500, 999])
    for t in (1.0, 0.7):
        want = [np_log_softmax(x[b].astype(np.float64) / t)[ids[b]] for b in range(3)]
        np.testing.assert_allclose(log_softmax_at(x, ids, temperature=t), want, atol=2e-5)
    np.testing.assert_allclose(log_softmax_at(x[0], [7]), [np_log_softmax(x[0].astype(np.float64))[7]], atol=2e-5)


# ---- bad input ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,error,match", [
    ([[0.0, 1.0]], TypeError, "logits must be a numpy.ndarray"),
    (np.zeros((2, 5)), TypeError, "logits must have dtype float32 or float16, got float64"),
    (np.zeros((2, 5), np.int32), TypeError, "logits must have dtype"),
    (np.zeros((2, 3, 5), np.float32), ValueError, r"logits must have 1..2 dimensions, got shape \(2, 3, 5\)"),
    (np.zeros((2, 10), np.float32)[:, ::2], ValueError, "C-contiguous"),
    (np.zeros((2, 10), np.float32)[:, ::-1], ValueError, "C-contiguous"),
    (np.zeros((2, 10), ">f4"), TypeError, "native byte order"),
    (np.zeros((2, 0), np.float32), ValueError, "empty"),
    (np.array([0.0, np.nan], np.float32), ValueError, "NaN"),
    (np.array([0.0, np.inf], np.float16), ValueError, r"\+inf"),
    (np.full(5, -np.inf, np.float32), ValueError, "no allowed token"),
])
def test_bad_logits(bad, error, match):
    with pytest.raises(error, match=match):
        Sampler().sample(bad)
    with pytest.raises(error, match=match):
        Sampler(temperature=1.0, top_p=0.5).sample_ids(bad)


def test_bad_masks_and_previous():
    x = np.zeros((2, 40), np.float32)
    s = Sampler(temperature=1.0)
    with pytest.raises(ValueError, match=r"allowed_mask \(packed uint32\) must have shape \(2, ceil\(V / 32\) = 2\)"):
        s.sample(x, allowed_mask=np.ones((2, 1), np.uint32))
    with pytest.raises(ValueError, match=r"allowed_mask \(bool\) must have shape \(2, 40\)"):
        s.sample(x, allowed_mask=np.ones((2, 39), bool))
    with pytest.raises(TypeError, match="allowed_mask must have dtype uint32 or bool"):
        s.sample(x, allowed_mask=np.ones((2, 2), np.float32))
    for sampler in (s, Sampler()):
        with pytest.raises(ValueError, match="no allowed token in row 1"):
            sampler.sample_ids(x, allowed_mask=np.array([[1, 0], [0, 0]], np.uint32))
    with pytest.raises(ValueError, match="no allowed token in row 0"):  # allowed bits past V do not count
        Sampler().sample_ids(x, allowed_mask=np.array([[0, 0xFFFFFF00], [1, 0]], np.uint32))
    with pytest.raises(ValueError, match="previous token id 40 is outside the vocabulary"):
        Sampler(repetition_penalty=1.3).sample(x, previous=[[1], [40]])
    with pytest.raises(ValueError, match=r"previous must have shape \(2, N\)"):
        s.sample(x, previous=[1, 2, 3])
    with pytest.raises(TypeError, match="previous must hold integer"):
        s.sample(x, previous=np.zeros((2, 2)))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(temperature=-1), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=1e-6), ValueError, "temperature must be 0 .greedy. or a finite number >= 1e-4"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=1.5), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(min_p=1.0), ValueError, "min_p"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=True), TypeError, "seed"),
])
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        Sampler(**kwargs)


def test_one_sampler_shared_by_threads_draws_like_serial_calls():
    # Each thread passes its own generator: the shared native sampler holds no random state and its scratch is per
    # thread, so concurrent calls (GIL released) give exactly the serial draws.
    from concurrent.futures import ThreadPoolExecutor

    x = logits(4, QWEN_V, seed=11, scale=2.0)
    prev = np.array([[5, 9, -1]] * 4, np.int64)
    sampler = Sampler(temperature=0.9, top_p=0.9, repetition_penalty=1.3, seed=21)

    def work(seed):
        rng = sampler.new_rng(seed)
        return np.concatenate([sampler.sample_ids(x, previous=prev, rng=rng) for _ in range(30)])

    serial = [work(seed) for seed in range(8)]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(work, range(8)))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(serial[0], serial[1])  # the seeds matter
    np.testing.assert_array_equal(sampler.sample_ids(x, rng=sampler.new_rng()),
                                  Sampler(temperature=0.9, top_p=0.9, seed=21).sample_ids(x))
