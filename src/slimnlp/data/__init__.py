"""Data: corpora (``sources``), seeded stratified splits (``splits``) and the cached datamodule."""

from slimnlp.data.datamodule import TextClassificationDataModule
from slimnlp.data.sources import BbcNews, DrugReviews, GlueTask, LocalFiles, Source, TweetSentiment
from slimnlp.data.splits import make_splits

__all__ = [
    "BbcNews",
    "DrugReviews",
    "GlueTask",
    "LocalFiles",
    "Source",
    "TextClassificationDataModule",
    "TweetSentiment",
    "make_splits",
]
