"""Low-rank factorization and weight sharing on the embedded default (4,000 tweets, the fine-tuned MiniLM-L6 as
teacher and as the model compressed): SVD against DRONE at two ranks, before and after recovery with KD,
ALBERT's factorized embeddings, cross-layer sharing (all, cycle, sandwich), and PABEE's early exit at patience 1,
2, 3 and 6 (6 = no exit: the PABEE model's own full depth).

    python experiments/low_rank_sharing.py [--cells NAME ...] [--list] [--report-only]

Every cell is one plain run, ``python train.py student=6L student.init_from=finetuned technique=<t> <overrides>
seed=<seed> <COMMON>``, trained cells at the default budget (2 epochs, 250 optimizer steps, KD from the teacher).
"Before recovery" cells (``recover=none``) are post-training and deterministic (one run, seed 42); three seeds
for svd and drone after recovery at the lower rank and for sharing all and cycle, one elsewhere. Ranks are a
fraction of each Linear's full rank (``rank_ratio``): 0.25 keeps 96 of 384, which halves an attention matrix
and keeps 31% of an FFN one; 0.5 keeps 192 (FFN 62%, attention matrices stay dense: 192 does not pay for a
384 x 384 matrix). ``COMMON`` drops ONNX Runtime, the robustness attacks and the energy meter from every cell.

PABEE is trained once per seed at patience 2 (``pabee_p2``); the other patience values re-evaluate and re-time that
saved run with ``technique=early_exit student=path`` (``exit_p<k>``, no training), so they run after it. The
paper's ``[CLS]`` pooling leaves the lower internal classifiers of this sentence-transformer at chance
(``experiments/pabee_cls_probe.py``), so the same cells also run with ``technique.exit_pooling=mean``
(``pabee_mean_p2``, ``exit_mean_p<k>``).

Each finished cell's ``results.json`` is copied into ``experiments/low_rank_sharing/cells/<cell>/`` and never
re-run, so the table can fill over several sessions; the report goes to ``experiments/low_rank_sharing/``, and
the same rows against SVD at rank 0.25 after KD (``vs_svd_r25_kd/``) and against sharing all layers
(``vs_share_all/``).
"""

from __future__ import annotations

from kept_cells import REPO, main

FINETUNED = ["student=6L", "student.init_from=finetuned"]
COMMON = ["measure.runtimes=[torch]", "eval.robustness.attacks=[]",
          "energy.enabled=false", "trainer.enable_progress_bar=false"]
GROUP_BY = ("technique,technique.rank_ratio,technique.recover,technique.rank,technique.strategy,"
            "technique.exit_pooling,technique.patience")
COLUMNS = ("test/acc,test/f1,fidelity/agreement,test/avg_exit_layer,eff/params,eff/disk_bytes,eff/flops,"
           "eff/latency_ms_b1,eff/latency_ms_b32,eff/speedup_b1,eff/speedup_b32")
PABEE_RUNS = REPO / "outputs" / "experiments" / "low_rank_sharing"  # exit_p<k>_s<seed> reads pabee_p2_s<seed> here
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
    "pabee_p2": (["technique=pabee", "technique.patience=2"], (0,)),
    "pabee_mean_p2": (["technique=pabee", "technique.patience=2", "technique.exit_pooling=mean"], (0,)),
}
EXIT_PATIENCE = {"cls": (1, 3, 6), "mean": (1, 2, 3, 6)}  # mean: patience 2 re-timed alone (the trained run timed busy)


def early_exit_cells(seeds: tuple[int, ...], pooling: str) -> dict[str, list[str]]:
    """``exit[_mean]_p<k>_s<seed>``: the saved ``pabee[_mean]_p2_s<seed>`` run at patience k (no training; it must
    have finished); ``technique.exit_pooling`` is checked against the saved student and names the row."""
    tag = "" if pooling == "cls" else f"_{pooling}"
    return {f"exit{tag}_p{k}_s{seed}": ["technique=early_exit", f"technique.patience={k}", "student=path",
                                        f"student.path={PABEE_RUNS / f'pabee{tag}_p2_s{seed}'}",
                                        f"technique.exit_pooling={pooling}", f"seed={seed}"]
            for k in EXIT_PATIENCE[pooling] for seed in seeds}


def cells() -> dict[str, list[str]]:
    return {**{f"{name}_s{seed}": [*FINETUNED, *overrides, f"seed={seed}"]
               for name, (overrides, seeds) in SETTINGS.items() for seed in seeds},
            **early_exit_cells(SETTINGS["pabee_p2"][1], "cls"),
            **early_exit_cells(SETTINGS["pabee_mean_p2"][1], "mean")}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cells(), COMMON, "low_rank_sharing", GROUP_BY, COLUMNS,
         baselines={"vs_svd_r25_kd": "technique=svd,technique.rank_ratio=0.25,technique.recover=kd",
                    "vs_share_all": "technique=layer_sharing,technique.strategy=all"})
