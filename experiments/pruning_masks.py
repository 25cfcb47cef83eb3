"""Which pretrained weights each pruning cell kept: how far a method's mask follows the pretrained weights'
magnitude. Reads the saved students of finished ``experiments/pruning_sparsity.py`` cells.

    python experiments/pruning_masks.py [--runs outputs/experiments/pruning_sparsity/e4]

For every encoder Linear a cell pruned (the table's ``targets=[encoder]``), the kept set is where the saved
weight is non-zero; it is compared with the same number of largest-magnitude weights of the pretrained MiniLM
the cell started from (``student=6L`` copies all six layers), matrix by matrix. The overlap is
``|kept ∩ top-|W_0||`` over the kept count, summed over the pruned matrices; chance is the kept fraction.
Magnitude pruning ranks the current ``|W|``, which fine-tuning moves little, so its overlap is near 1; movement
pruning ranks what it learned in the scores, which Sanh et al. mean to differ from magnitude. The table is
written to ``experiments/pruning_sparsity/<runs folder name>/kept_vs_pretrained.md``; the run folders it reads
live under ``outputs/`` (not committed), so it is rebuilt only where the cells ran.
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import torch
from kept_cells import REPO
from torch import nn
from transformers import AutoModel

from slimnlp.artifacts import load_student
from slimnlp.models.assets import resolve_pretrained
from slimnlp.models.structure import prunable_modules
from slimnlp.modules.masking import top_fraction
from slimnlp.report.collect import Run, load_run


def encoder_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights the table's cells prune (``targets=[encoder]``), in module order: the same order in the
    pretrained encoder and in a saved classifier student."""
    return [module.weight.detach() for _, module in prunable_modules(model, ["encoder"])]


@cache
def pretrained_weights(name_or_path: str) -> list[torch.Tensor]:
    """The encoder weights of the pretrained model a cell's student started from (``student=6L`` copies all six
    layers of the teacher's pretrained source, ``teacher.name_or_path``)."""
    return encoder_weights(AutoModel.from_pretrained(resolve_pretrained(name_or_path, None)))


def kept_among_largest(kept: torch.Tensor, reference: torch.Tensor) -> int:
    """How many kept entries are among the same number of largest ``|reference|`` entries."""
    largest = top_fraction(reference.abs(), int(kept.sum()) / kept.numel()).bool()
    return int((kept & largest).sum())


def cell_row(run_dir: Path, pretrained: list[torch.Tensor]) -> tuple[float, float]:
    """(overlap, kept fraction) over all the weights of the matrices the cell pruned, as ``compress/sparsity``
    counts them (a large FFN matrix weighs more than a small attention one)."""
    among = kept_total = total = 0
    for weight, start in zip(encoder_weights(load_student(run_dir / "student")), pretrained, strict=True):
        kept = weight != 0
        if bool(kept.all()):
            continue  # not pruned
        among += kept_among_largest(kept, start)
        kept_total += int(kept.sum())
        total += kept.numel()
    return among / kept_total, kept_total / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "experiments" / "pruning_sparsity" / "e4")
    args = parser.parse_args()
    out = REPO / "experiments" / "pruning_sparsity" / args.runs.name / "kept_vs_pretrained.md"
    lines = ["# Kept weights against the pretrained weights' magnitude", "",
             ("Built by `python experiments/pruning_masks.py` from the saved students of the finished cells "
             f"under `{args.runs.relative_to(REPO) if args.runs.is_relative_to(REPO) else args.runs}`. Overlap: share "
             "of the kept weights that are among their matrix's same number of largest-magnitude pretrained weights, over all "
             "pruned encoder matrices; chance = the kept fraction (1 − `compress/sparsity`)."), "",
             "| cell | kept fraction | overlap with the largest pretrained weights | chance | test acc |",
             "|---|---:|---:|---:|---:|"]
    for path in sorted(args.runs.glob("*/results.json")):
        run = load_run(path)
        if not isinstance(run, Run) or not (path.parent / "student").is_dir():
            continue
        overlap, kept = cell_row(path.parent, pretrained_weights(run.config["teacher"]["name_or_path"]))
        lines.append(f"| {path.parent.name} | {kept:.4f} | {overlap:.3f} | {kept:.3f} | {run.metrics['test/acc']:.4f} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
