"""Do unstructured zeros make a BERT matrix multiply faster on this CPU? Dense ``F.linear`` against torch's
CSR kernel (``torch.sparse.mm``) for the MiniLM FFN matrix (1536 x 384) at the sparsities of the pruning
table, a batch of 32 sequences of 64 tokens, fixed threads, interleaved rounds after warm-up.

    python benchmarks/sparse_linear.py [--sparsities 0.5 0.9 0.97] [--threads 2] [--repeats 30]

Prints the median time of each and the ratio; nothing is asserted (it is a measurement of the kernels, not of
slimnlp). The README quotes it where it says whether pruned models run faster.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from slimnlp.metrics.latency import interleaved_times_ms, percentiles, torch_threads
from slimnlp.modules.masking import top_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.97])
    parser.add_argument("--out-features", type=int, default=1536)
    parser.add_argument("--in-features", type=int, default=384)
    parser.add_argument("--tokens", type=int, default=32 * 64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.in_features)
    dense_w = torch.randn(args.out_features, args.in_features)
    print(f"weight {args.out_features}x{args.in_features}, {args.tokens} tokens, {args.threads} threads, "
          f"{args.repeats} rounds")
    print("| sparsity | dense ms | CSR ms | CSR / dense |")
    print("|---:|---:|---:|---:|")
    with torch_threads(args.threads), torch.inference_mode():
        for sparsity in args.sparsities:
            w = dense_w * top_fraction(dense_w.abs(), 1 - sparsity)
            csr = w.to_sparse_csr()
            xt = x.t().contiguous()
            calls = {"dense": lambda w=w: F.linear(x, w), "csr": lambda csr=csr, xt=xt: torch.sparse.mm(csr, xt)}
            torch.testing.assert_close(calls["csr"]().t(), calls["dense"](), rtol=1e-4, atol=1e-3)
            times = interleaved_times_ms(calls, repeats=args.repeats, warmup=3)
            dense, sparse = percentiles(times["dense"])["p50"], percentiles(times["csr"])["p50"]
            print(f"| {sparsity:.0%} | {dense:.2f} | {sparse:.2f} | {sparse / dense:.2f} |")


if __name__ == "__main__":
    main()
