"""Data: corpora (``sources``), seeded stratified splits (``splits``), the cached classification datamodule and
the unlabelled text corpus of general distillation (``text_corpus``)."""

from slimnlp.data.datamodule import TextClassificationDataModule
from slimnlp.data.sources import BbcNews, DrugReviews, GlueTask, LocalFiles, Source, TweetSentiment
from slimnlp.data.splits import make_splits
from slimnlp.data.text_corpus import TextCorpusDataModule, TextFiles

__all__ = [
    "BbcNews",
    "DrugReviews",
    "GlueTask",
    "LocalFiles",
    "Source",
    "TextClassificationDataModule",
    "TextCorpusDataModule",
    "TextFiles",
    "TweetSentiment",
    "make_splits",
]
