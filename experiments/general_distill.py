"""General distillation, then TinyBERT's task stages: does distilling the pretrained MiniLM-L6 on unlabelled text
first make TinyBERT's own 4 x 312 student (random init) learn the tweets, and does it help a 4 x 384 student that
already starts from teacher layers? Issue #14's table.

    python experiments/general_distill.py [--cells NAME ...] [--list] [--report-only]

General cells (``general_<student>``, one run each, seed 0): ``python train.py technique=general_distill
data=text_corpus data.corpora=[tweet_sentiment,bbc_news,drug_reviews] student=<student> <GENERAL>``: the
training-split texts of the three embedded corpora (labels dropped; their validation and test texts kept out),
64 tokens, 1,000 texts held out, ``trainer.max_steps=800`` at batch 32 (25,600 texts, 0.8 of an epoch; what one CPU session allows), TinyBERT's objective and recipe (lr 5e-5,
10% warm-up, linear decay), from the *pretrained* all-MiniLM-L6-v2 (not fine-tuned).

Task cells (``task_<student>[_gd]_s<seed>``, seeds 0, 1, 2): ``python train.py technique=tinybert
<student or student=path student.path=<general run>/student> data.max_train_samples=2000 trainer.max_epochs=1
seed=<seed>``, the budget of the README's earlier ``tinybert_4L`` row (0.4125): the same 2,000 training tweets,
one epoch per TinyBERT stage, the cached fine-tuned MiniLM-L6 as the task teacher. ``_gd`` cells start from the
general student, the others from the student option's own initialisation (``tinybert_4L``: random; ``4L``:
teacher layers 1, 2, 4, 5 of the pretrained model, ``init=skip``). ``tags`` names the row. A ``_gd`` cell needs its general cell's ``student/`` folder under ``outputs/``, which is not
kept: on a new machine, re-run the general command above into ``outputs/experiments/general_distill/general_<student>``
first (it is deterministic here: the re-run's held-out loss matched the kept cell's to 7 digits). The report gives each row's difference from the same
student without general distillation (``vs_tinybert_4L/``, ``vs_4L/``).
"""

from __future__ import annotations

from kept_cells import REPO, main

RUNS = REPO / "outputs" / "experiments" / "general_distill"  # the general cells' run folders (their student/)
GENERAL = ["technique=general_distill", "data=text_corpus", "data.corpora=[tweet_sentiment,bbc_news,drug_reviews]",
           "data.max_length=64", "trainer.max_steps=800", "seed=0"]
TASK = ["technique=tinybert", "data.max_train_samples=2000", "trainer.max_epochs=1"]
COMMON = ["measure.runtimes=[torch]", "eval.robustness.attacks=[]", "energy.enabled=false",
          "trainer.enable_progress_bar=false"]
STUDENTS = ("tinybert_4L", "4L")
SEEDS = (0, 1, 2)
GROUP_BY = "task,technique,tags"  # the general cells' task is text_corpus
COLUMNS = "test/acc,test/f1,fidelity/agreement,val/loss,eff/params,eff/speedup_b32,train/optimizer_steps,time/run_s"


def cells() -> dict[str, list[str]]:
    """Per student: its general cell, the task cells from it, then the task cells without it."""
    table = {}
    for s in STUDENTS:
        table[f"general_{s}"] = [*GENERAL, f"student={s}", f"tags=[general_{s}]"]
        general = RUNS / f"general_{s}" / "student"
        for seed in SEEDS:
            table[f"task_{s}_gd_s{seed}"] = [*TASK, "student=path", f"student.path={general}", f"tags=[{s}+general]",
                                             f"seed={seed}"]
        for seed in SEEDS:
            table[f"task_{s}_s{seed}"] = [*TASK, f"student={s}", f"tags=[{s}]", f"seed={seed}"]
    return table


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cells(), COMMON, "general_distill", GROUP_BY, COLUMNS,
         baselines={f"vs_{s}": f'tags=["{s}"]' for s in STUDENTS})
