"""The search engine against a brute-force numpy reference (clipcurate.overlap.search.brute_force)."""

from __future__ import annotations

import numpy as np
import pytest

from clipcurate.overlap import search as se
from clipcurate.core.errors import ClipcurateError


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _split(x, cuts):
    edges = [0, *cuts, len(x)]
    return [x[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _pairs_set(p):
    return sorted(zip(p.query.tolist(), p.pos.tolist()))


def _check(top, pairs, ref_top, ref_pairs):
    # (a): the same neighbours in the same order, the same scores (float32 summation order aside)
    assert np.array_equal(top.pos, ref_top.pos)
    np.testing.assert_allclose(top.scores, ref_top.scores, rtol=0, atol=1e-6)
    # (b): the same set of pairs
    assert _pairs_set(pairs) == _pairs_set(ref_pairs)


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


BACKENDS = ["numpy", "torch"] + (["faiss"] if _have("faiss") else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cuts,block", [([], None), ([1, 500, 503, 1700], None), ([777], 4096)])
def test_topk_and_range_equal_brute_force(backend, cuts, block):
    rng = np.random.default_rng(7)
    q, pool = _unit(rng, 150, 24), _unit(rng, 2500, 24)
    floor = np.where(np.arange(150) % 2 == 0, 0.5, 0.6).astype(np.float32)  # per-benchmark floors
    top, pairs = se.search(q, _split(pool, cuts), 10, floor, backend=backend, block_elems=block)
    _check(top, pairs, *se.brute_force(q, pool, 10, floor))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_pool_order_whatever_the_sharding(backend):
    rng = np.random.default_rng(3)
    q, pool = _unit(rng, 30, 16), _unit(rng, 600, 16)
    # exact copies: the same vector at several pool positions → tied scores
    for pos in (5, 77, 78, 300, 599):
        pool[pos] = q[4]
    pool[100:140] = pool[10]  # ties away from the top too
    ref = se.brute_force(q, pool, 3, 0.7)
    assert ref[0].pos[4].tolist() == [5, 77, 78]
    for cuts in ([], [6, 78], [1, 2, 3, 299]):
        _check(*se.search(q, _split(pool, cuts), 3, 0.7, backend=backend), *ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_range_pairs_not_capped_by_k(backend):
    rng = np.random.default_rng(5)
    q, pool = _unit(rng, 20, 16), _unit(rng, 3000, 16)
    copies = rng.choice(3000, 400, replace=False)
    pool[copies] = q[0]  # one benchmark image copied 400 times
    top, pairs = se.search(q, _split(pool, [1000, 2000]), 5, 0.95, backend=backend)
    hit = sorted(pairs.pos[pairs.query == 0].tolist())
    assert hit == sorted(copies.tolist())
    assert top.pos[0].tolist() == sorted(copies.tolist())[:5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_changed_on_the_host_is_kept(backend):
    """Per-shard searches merged on the host with merge_topk (the Ray executor's way), then more
    shards on the same Searcher: the same answer as one streaming search."""
    rng = np.random.default_rng(4)
    q, pool = _unit(rng, 50, 16), _unit(rng, 3000, 16)
    ref = se.brute_force(q, pool, 5, 0.9)
    main = se.Searcher(q, 5, 0.9, backend=backend)
    for part, base in ((pool[:1000], 0), (pool[1000:2000], 1000)):
        s = se.Searcher(q, 5, 0.9, backend=backend)
        s.add(part, base)
        t = s.top
        rows, cols = np.nonzero(t.pos >= 0)
        se.merge_topk(main.top, None, rows.astype(np.int64), t.pos[rows, cols], t.scores[rows, cols])
    main.add(pool[2000:], 2000)
    assert np.array_equal(main.top.pos, ref[0].pos)
    resumed = se.Searcher(q, 5, 0.9, backend=backend)
    resumed.set_top(main.top.scores, main.top.pos)
    assert np.array_equal(resumed.top.pos, ref[0].pos)


def test_fewer_pool_rows_than_k_leaves_empty_slots():
    rng = np.random.default_rng(1)
    q, pool = _unit(rng, 4, 8), _unit(rng, 3, 8)
    top, _ = se.search(q, [pool[:1], pool[1:]], 5, 0.9, backend="numpy")
    ref, _ = se.brute_force(q, pool, 5, 0.9)
    assert (top.pos[:, 3:] == -1).all() and np.isinf(top.scores[:, 3:]).all()
    assert np.array_equal(top.pos[:, :3], ref.pos[:, :3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_vectors_are_one_line_errors(backend):
    rng = np.random.default_rng(0)
    q, pool = _unit(rng, 4, 8), _unit(rng, 10, 8)
    bad = pool.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ClipcurateError, match=r"NaN/inf \(first rows \[3\]\)"):
        se.search(q, [bad], 2, 0.5, backend=backend)
    with pytest.raises(ClipcurateError, match="dimension 6"):
        se.search(q, [pool[:, :6]], 2, 0.5, backend=backend)
    qbad = q.copy()
    qbad[1, 0] = np.inf
    with pytest.raises(ClipcurateError, match="benchmark embeddings"):
        se.search(qbad, [pool], 2, 0.5, backend=backend)
    with pytest.raises(ClipcurateError, match="backend 'gpu'"):
        se.search(q, [pool], 2, 0.5, backend="gpu")


def test_threaded_mask_on_big_blocks():
    """Blocks above 4M scores split the mask over threads; same answer as the reference."""
    rng = np.random.default_rng(2)
    q, pool = _unit(rng, 600, 16), _unit(rng, 12000, 16)
    pool[5000] = q[3]
    _check(*se.search(q, _split(pool, [7000]), 10, 0.8, backend="numpy"), *se.brute_force(q, pool, 10, 0.8))


@pytest.mark.skipif(not se.cuda_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(11)
    q, pool = _unit(rng, 3000, 512), _unit(rng, 60000, 512)
    pool[123] = q[7]
    pool[[200, 300, 40000]] = q[8]  # exact ties across shards
    ref = se.search(q, _split(pool, [20000, 40000]), 10, 0.3, backend="numpy")
    gpu = se.search(q, _split(pool, [20000, 40000]), 10, 0.3, backend="torch")
    # cuBLAS sums in another order: scores agree to float32 rounding, neighbours exactly except
    # where two scores are closer than that
    diff = np.abs(gpu[0].scores - ref[0].scores)
    assert diff.max() < 2e-6, f"max score difference {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"
    differ = (gpu[0].pos != ref[0].pos).any(axis=1)
    gaps = np.abs(np.diff(ref[0].scores, axis=1)).min(axis=1)
    assert (gaps[differ] < 4e-6).all(), f"rows {np.flatnonzero(differ)[:5]} differ with gaps {gaps[differ][:5]}"
    assert gpu[0].pos[7, 0] == 123 and gpu[0].pos[8, :3].tolist() == [200, 300, 40000]
    assert _pairs_set(gpu[1]) == _pairs_set(ref[1]), (len(gpu[1]), len(ref[1]))
