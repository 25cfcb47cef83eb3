"""slimnlp: compress NLP transformers and compare the methods fairly."""

__version__ = "0.1.0"
