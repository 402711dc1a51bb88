"""Corpus loaders. Importing this package registers every built-in corpus in ``CORPORA``."""

from gmptl.data.corpora import acted, iemocap, tables, unlabeled  # noqa: F401  (registration side effect)
from gmptl.data.corpora.base import CORPORA, CorpusSpec, LabelMapper, LoadResult, get_corpus, register_corpus

__all__ = ["CORPORA", "CorpusSpec", "LabelMapper", "LoadResult", "get_corpus", "register_corpus"]
