"""What an IVF index gives up: recall of planted near-copies in a range search, IVF vs exact.

The overlap stage searches exactly (every pair scored). This script measures, on the same data in
the same run, what ``faiss.IndexIVFFlat`` (nlist cells, nprobe probed) would cost in recall of
result (b) — the planted (benchmark, pool) pairs above the review threshold — and what it saves in
time against the exact ``IndexFlatIP`` range search. The data are clustered unit vectors (500
centres + noise, closer to real embeddings than isotropic noise) with 2,000 planted copies at
cosine 0.85-0.99.

    python benchmarks/overlap_ivf.py
"""
import numpy as np, faiss, time
rng = np.random.default_rng(0)
d, n, m = 128, 200_000, 2000
def unit(x): return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
# clustered data (more like real embeddings than isotropic noise): 500 centres + noise
C = unit(rng.standard_normal((500, d)))
pool = unit(C[rng.integers(0, 500, n)] + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d) * 4)
q = unit(C[rng.integers(0, 500, m)] + 0.6 * rng.standard_normal((m, d)) / np.sqrt(d) * 4)
cos = rng.uniform(0.85, 0.99, m)
pos = rng.choice(n, m, replace=False)
for i in range(m):
    r = rng.standard_normal(d).astype(np.float32); r -= (r @ q[i]) * q[i]; r /= np.linalg.norm(r)
    pool[pos[i]] = cos[i] * q[i] + np.sqrt(1 - cos[i] ** 2) * r
flat = faiss.IndexFlatIP(d); flat.add(pool)
t = time.perf_counter(); lims, D, I = flat.range_search(q, 0.85); t_flat = time.perf_counter() - t
nlist = 1024
quant = faiss.IndexFlatIP(d)
ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
ivf.train(pool[rng.choice(n, 50_000, replace=False)]); ivf.add(pool)
print(f"exact range search {t_flat:.2f}s")
for nprobe in (1, 4, 16, 64):
    ivf.nprobe = nprobe
    t = time.perf_counter(); lims2, D2, I2 = ivf.range_search(q, 0.85); ti = time.perf_counter() - t
    found = 0; by = {"0.85-0.90": [0, 0], "0.90-0.95": [0, 0], "0.95-0.99": [0, 0]}
    for i in range(m):
        hit = pos[i] in set(I2[lims2[i]:lims2[i + 1]].tolist())
        found += hit
        b = "0.85-0.90" if cos[i] < 0.9 else "0.90-0.95" if cos[i] < 0.95 else "0.95-0.99"
        by[b][0] += hit; by[b][1] += 1
    print(f"nlist {nlist} nprobe {nprobe}: planted recall {found / m:.4f} "
          + " ".join(f"{k}:{v[0] / v[1]:.3f}" for k, v in by.items())
          + f"; pairs {lims2[-1]} vs exact {lims[-1]}; time {ti:.2f}s ({t_flat / ti:.1f}x faster)")
