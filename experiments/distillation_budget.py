"""The distillation family at one step budget, three seeds: issue #13's budget-equal table.

    python experiments/distillation_budget.py [--cells NAME ...] [--list] [--report-only]

Every cell is ``python train.py technique=<t> student=<s> seed=<seed> <BUDGET>``: the same 8,000 training tweets,
the same 2,000 validation and test tweets, the same cached fine-tuned MiniLM-L6 teacher, the same optimizer and
**the same number of student optimizer steps**, ``trainer.max_steps=250`` (one epoch of the 8,000 tweets at batch
32). Two-stage techniques (TinyBERT) split the 250 steps between their stages (``slimnlp.budget``: half each);
BERT-of-Theseus replaces modules and fine-tunes the successors within its one run, by the same rule: its linear
replacement rate reaches p = 1 at half the budget (``scheduler_linear_k=0.0056``: 0.3 + 125 k = 1), the second half
successor-only. The reference README's slope, 0.0006, reaches p = 1 only after 1,167 steps; at 250 steps it ends at
p = 0.45, the successors never train alone, and the exported 2-layer student predicted the majority class on every
tweet (test 0.4125, seed 0: ``reference_slope/theseus_2L_s0``). Each technique keeps its own recipe otherwise (its
paper's loss weights, stage LRs and student initialisation: ``student.init`` follows the technique, e.g. PKD's
first layers). MetaDistil quizzes on the validation split (``quiz_source=validation``) so its student trains on the
same 8,000 tweets as the others, one quiz batch per step (``quiz_batches=1``, the released ``--num_held_batches
1``; the whole quiz set every step would cost 60× a kd step here).

The 4-layer student cannot run Theseus (6 teacher layers do not split into 4 blocks): that cell is refused in
one line and left out. Seeds 0, 1, 2. The report gives mean ± std per technique and student, and each row's
difference from ``kd``, from ``finetune`` and from ``pkd`` (TinyBERT's paper compares with PKD) with a 95%
interval (``experiments/distillation_budget/vs_kd``, ``.../vs_finetune``, ``.../vs_pkd``). Each finished cell's
``results.json`` is kept in ``experiments/distillation_budget/cells``.
"""

from __future__ import annotations

from kept_cells import main

from slimnlp.budget import split_steps

STEPS = 250  # student optimizer steps of every cell
BUDGET = ["data.max_train_samples=8000", f"trainer.max_steps={STEPS}", "measure.runtimes=[torch]",
          "eval.robustness.attacks=[]", "energy.enabled=false", "trainer.enable_progress_bar=false"]
THESEUS_BASE_RATE = 0.3  # technique.replacing_rate (the reference's b)
# The slope that takes p from b to 1 in the first half of the budget, the half TinyBERT's first stage gets.
THESEUS_SLOPE = (1 - THESEUS_BASE_RATE) / split_steps(STEPS, [0.5, 0.5])[0]
TECHNIQUES = {  # technique -> its overrides in this table
    "finetune": [], "kd": [], "pkd": [], "distilbert": [], "minilm": [], "minilm_v2": [], "tinybert": [],
    "theseus": [f"technique.replacing_rate={THESEUS_BASE_RATE}", f"technique.scheduler_linear_k={THESEUS_SLOPE:g}"],
    "multi_teacher": [], "mixkd": [],
    "meta_kd": ["technique.quiz_source=validation", "technique.quiz_batches=1"],
}
STUDENTS = ("4L", "2L")
SEEDS = (0, 1, 2)
GROUP_BY = "technique,student"
COLUMNS = "test/acc,test/f1,fidelity/agreement,eff/params,eff/speedup_b32,train/optimizer_steps,time/run_s"


def cells() -> dict[str, list[str]]:
    return {f"{t}_{s}_s{seed}": [f"technique={t}", f"student={s}", *overrides, f"seed={seed}"]
            for seed in SEEDS for s in STUDENTS for t, overrides in TECHNIQUES.items()
            if not (t == "theseus" and s == "4L")}


if __name__ == "__main__":
    main(__doc__.splitlines()[0], cells(), BUDGET, "distillation_budget", GROUP_BY, COLUMNS,
         baselines={"vs_kd": "technique=kd", "vs_finetune": "technique=finetune", "vs_pkd": "technique=pkd"})
