"""Out-of-distribution evaluation: accuracy and macro-F1 on another corpus with the same label names.

Distribution shift is where compressed models lose most against their teachers (Du et al., 2021, "Robustness
Challenges in Model Distillation and Pruning for Natural Language Understanding"); in-distribution accuracy
does not show it. Plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from slimnlp.errors import ConfigError
from slimnlp.metrics.classification import task_metrics
from slimnlp.metrics.robustness import metric_prefix, predict


def ood_label_map(
    source_label_names: Sequence[str], ood_label_names: Sequence[str], ood_name: str
) -> list[int]:
    """For each OOD label id, the source label id with the same name (names match exactly). The OOD corpus
    may order its labels differently (or use a subset of them); a name the source does not have cannot be
    scored and is a config error."""
    index = {name: i for i, name in enumerate(source_label_names)}
    missing = [name for name in ood_label_names if name not in index]
    if missing:
        raise ConfigError(
            "eval.ood",
            ood_name,
            f"the OOD labels {list(ood_label_names)} must all be among the run's labels "
            f"{list(source_label_names)}; missing: {missing}",
        )
    return [index[name] for name in ood_label_names]


def ood_metrics(
    models: Mapping[str, nn.Module],
    source_label_names: Sequence[str],
    ood_name: str,
    ood_dm: Any,
    split: str = "test",
    device: torch.device | str | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of each model on another corpus's ``split`` with the same label names.

    Distribution shift is where compressed models lose most against their teachers (Du et al., 2021), and
    in-distribution accuracy does not show it. ``ood_dm`` is a set-up datamodule that tokenized with the
    run's tokenizer and ``max_length`` (pass ``tokenizer`` / ``max_length`` to have that checked); its labels
    are mapped to the run's label ids by name (:func:`ood_label_map`). Keys:
    ``<prefix>ood/<name>/acc``, ``.../f1`` (macro over the run's classes, as ``metrics.classification``;
    classes absent from both labels and predictions do not count) and ``.../examples``.
    """
    if tokenizer is not None:
        from slimnlp.data.datamodule import tokenizer_identity  # the datamodule imports this package

        if tokenizer_identity(ood_dm.tokenizer) != tokenizer_identity(tokenizer):
            raise ConfigError("eval.ood", ood_name, "an OOD datamodule built with the run's tokenizer")
    if max_length is not None and ood_dm.max_length != max_length:
        raise ConfigError("eval.ood", ood_name, f"an OOD datamodule with the run's max_length {max_length}")
    if split not in ood_dm.datasets:
        raise ConfigError(
            "eval.ood", ood_name, f"a datamodule with a '{split}' split; it has {list(ood_dm.datasets)}"
        )
    mapping = torch.tensor(ood_label_map(source_label_names, ood_dm.label_names, ood_name), dtype=torch.long)
    ds = ood_dm.datasets[split]
    labels = mapping[torch.as_tensor(ds.with_format(None)["labels"], dtype=torch.long)]
    out: dict[str, float] = {}
    for name, model in models.items():
        loader = DataLoader(ds, batch_size=ood_dm.eval_batch_size, collate_fn=ood_dm.collate)
        preds = predict(model, loader, device)
        scores = task_metrics(["acc", "f1"], len(source_label_names), preds, labels)
        prefix = f"{metric_prefix(name)}ood/{ood_name}/"
        out.update({prefix + key: value for key, value in scores.items()})
        out[prefix + "examples"] = float(len(labels))
    return out
