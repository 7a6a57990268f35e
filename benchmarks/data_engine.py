"""Speed of the data engine: estimator scoring, the MMD^2 matrix and top-K selection, each against a plain baseline.

1. Scoring N cached D-dim fp16 features (a memory-mapped file, as the features stage writes) with the proximity
   estimator (`emt.estimator.score_features`, streamed in chunks) against a plain numpy matmul over the same memmap
   (`np.asarray(mm, float32) @ w`, the whole array at once: the bandwidth-bound reference, with memory that grows with
   N). Both are timed on a warm page cache (one untimed pass first), so they measure compute and memory bandwidth,
   not the disk. Peak extra memory of ours is one chunk.
2. The unbiased MMD^2 matrix of G sources of n samples (`emt.gap.mmd2_matrix`: one pass of kernel row blocks) against
   a plain loop over pairs with batched `torch.cdist` for k(x,x), k(y,y) and k(x,y).
3. Top-K of M scores with ties broken by id (`emt.scores.top_k`) against a full `np.lexsort`.

    python benchmarks/data_engine.py                    # 1M x 1024 scoring, 8 x 2000 MMD, 10M top-K
    python benchmarks/data_engine.py --n 200000         # smaller scoring run
"""
import argparse, os, tempfile, time

os.environ.setdefault('EMT_PROGRESS', '0')

import numpy as np
import torch

from emt.estimator import ProximityEstimator, score_features
from emt.gap import mmd2_matrix, median_bandwidth
from emt.scores import rank_order, top_k


def best_of(fn, repeat=3):
    "Fastest of `repeat` runs (seconds) and the last result."
    best, out = float('inf'), None
    for _ in range(repeat):
        t = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t)
    return best, out


def bench_scoring(n: int, d: int, folder: str) -> dict:
    path = os.path.join(folder, 'features.f16')
    mm = np.lib.format.open_memmap(path, mode='w+', dtype=np.float16, shape=(n, d))
    g = np.random.default_rng(0)
    for i in range(0, n, 65536): mm[i:i + 65536] = g.standard_normal((min(65536, n - i), d), dtype=np.float32)
    mm.flush(); del mm
    mm = np.load(path, mmap_mode='r')
    est = ProximityEstimator(d); torch.nn.init.normal_(est.linear.weight, std=0.02)
    w = est.linear.weight.detach().numpy()[0].astype(np.float32); b = float(est.linear.bias.detach())
    np.asarray(mm).sum(dtype=np.float32)  # warm the page cache
    t_ours, ours = best_of(lambda: score_features(est, mm))
    t_plain, plain = best_of(lambda: np.asarray(mm, dtype=np.float32) @ w + b)
    assert np.allclose(ours, plain, atol=1e-3), 'the two scorings disagree'
    gb = n * d * 2 / 1e9
    return {'features': f'{n} x {d} fp16 ({gb:.2f} GB)', 'ours_s': round(t_ours, 3), 'numpy_matmul_s': round(t_plain, 3),
            'ours_GB_per_s': round(gb / t_ours, 2), 'numpy_GB_per_s': round(gb / t_plain, 2),
            'ours_over_numpy_time': round(t_ours / t_plain, 2), 'ours_peak_chunk_MB': round(65536 * d * 4 / 1e6, 1),
            'numpy_peak_MB': round(n * d * 4 / 1e6, 1)}


def plain_mmd(xs, sigma):
    "The reference: a loop over pairs, three batched cdist calls each."
    g = len(xs); m = np.zeros((g, g))
    k = lambda a, b: torch.exp(-torch.cdist(a[None], b[None])[0] ** 2 / (2 * sigma ** 2))
    for i in range(g):
        for j in range(i + 1, g):
            x, y = xs[i], xs[j]; n1, n2 = len(x), len(y)
            kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
            m[i, j] = m[j, i] = ((kxx.sum() - kxx.trace()) / (n1 * (n1 - 1)) + (kyy.sum() - kyy.trace()) / (n2 * (n2 - 1))
                                 - 2 * kxy.mean()).item()
    return m


def bench_mmd(g: int, n: int, d: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, d, generator=gen) + 0.05 * i for i in range(g)]
    sigma = median_bandwidth(torch.cat(xs))
    t_ours, ours = best_of(lambda: mmd2_matrix(xs, sigma), 2)
    t_plain, plain = best_of(lambda: plain_mmd(xs, sigma), 2)
    assert np.allclose(ours, plain, atol=1e-4), np.abs(ours - plain).max()
    return {'sources': f'{g} x {n} x {d}', 'ours_s': round(t_ours, 3), 'cdist_pairs_s': round(t_plain, 3),
            'speedup': round(t_plain / t_ours, 2)}


def bench_topk(m: int, k: int) -> dict:
    g = np.random.default_rng(0)
    score = np.round(g.standard_normal(m), 4)  # rounded: many ties, so the id tie-break is exercised
    ids = np.char.add('s', np.arange(m).astype('U9'))
    t_ours, ours = best_of(lambda: top_k(score, ids, k), 2)
    t_sort, full = best_of(lambda: rank_order(score, ids)[:k], 1)
    assert np.array_equal(ours, full)
    return {'scores': m, 'k': k, 'ours_s': round(t_ours, 3), 'full_lexsort_s': round(t_sort, 3),
            'speedup': round(t_sort / t_ours, 1)}


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=1_000_000, help='features to score')
    ap.add_argument('--dim', type=int, default=1024)
    ap.add_argument('--sources', type=int, default=8); ap.add_argument('--per-source', type=int, default=2000)
    ap.add_argument('--topk-n', type=int, default=10_000_000); ap.add_argument('--k', type=int, default=1_200_000)
    a = ap.parse_args()
    print(f'torch threads: {torch.get_num_threads()}, cpu: {os.cpu_count()} cores')
    with tempfile.TemporaryDirectory() as tmp:
        print('scoring:', bench_scoring(a.n, a.dim, tmp), flush=True)
    print('mmd:', bench_mmd(a.sources, a.per_source, a.dim), flush=True)
    print('top-k:', bench_topk(a.topk_n, min(a.k, a.topk_n)), flush=True)
