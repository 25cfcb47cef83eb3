"""Low-rank factorization and weight sharing on the embedded default (4,000 tweets, the fine-tuned MiniLM-L6 as
teacher and as the model compressed): SVD against DRONE at two ranks, before and after recovery with KD,
ALBERT's factorized embeddings, and cross-layer sharing (all, cycle, sandwich).

    python experiments/low_rank_sharing.py [--cells NAME ...] [--list] [--report-only]

Every cell is one plain run, ``python train.py student=6L student.init_from=finetuned technique=<t> <overrides>
seed=<seed> <COMMON>``, trained cells at the default budget (2 epochs, 250 optimizer steps, KD from the teacher).
"Before recovery" cells (``recover=none``) are post-training and deterministic (one run, seed 42); three seeds
for svd and drone after recovery at the lower rank and for sharing all and cycle, one elsewhere. Ranks are a
fraction of each Linear's full rank (``rank_ratio``): 0.25 keeps 96 of 384, which halves an attention matrix
and keeps 31% of an FFN one; 0.5 keeps 192 (FFN 62%, attention matrices stay dense: 192 does not pay for a
384 x 384 matrix). ``COMMON`` drops ONNX Runtime, the robustness attacks and the energy meter from every cell.

Each finished cell's ``results.json`` is copied into ``experiments/low_rank_sharing/cells/<cell>/`` and never
re-run, so the table can fill over several sessions; the report goes to ``experiments/low_rank_sharing/``.
"""

from __future__ import annotations

from kept_cells import main

COMMON = ["student=6L", "student.init_from=finetuned", "measure.runtimes=[torch]", "eval.robustness.attacks=[]",
          "energy.enabled=false", "trainer.enable_progress_bar=false"]
GROUP_BY = "technique,technique.rank_ratio,technique.recover,technique.rank,technique.strategy"
COLUMNS = ("test/acc,test/f1,fidelity/agreement,eff/params,eff/disk_bytes,eff/flops,eff/latency_ms_b1,"
           "eff/latency_ms_b32,eff/speedup_b32")
SETTINGS = {  # cell name prefix -> overrides, seeds
    **{f"{t}_r{int(r * 100)}_none": ([f"technique={t}", f"technique.rank_ratio={r}", "technique.recover=none"], (42,))
       for t in ("svd", "drone") for r in (0.5, 0.25)},
    **{f"{t}_r25_kd": ([f"technique={t}", "technique.rank_ratio=0.25"], (0, 1, 2)) for t in ("svd", "drone")},
    **{f"{t}_r50_kd": ([f"technique={t}", "technique.rank_ratio=0.5"], (0,)) for t in ("svd", "drone")},
    "emb_e128_kd": (["technique=embedding_factorization", "technique.rank=128"], (0,)),
    "share_all": (["technique=layer_sharing", "technique.strategy=all", "technique.unique_layers=null"], (0, 1, 2)),
    "share_cycle": (["technique=layer_sharing", "technique.strategy=cycle", "technique.unique_layers=3"], (0, 1, 2)),
    "share_sandwich": (["technique=layer_sharing", "technique.strategy=sandwich", "technique.unique_layers=null"],
                       (0,)),
}


def cells() -> dict[str, list[str]]:
    return {f"{name}_s{seed}": [*overrides, f"seed={seed}"]
            for name, (overrides, seeds) in SETTINGS.items() for seed in seeds}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cells(), COMMON, "low_rank_sharing", GROUP_BY, COLUMNS)
