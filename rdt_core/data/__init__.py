"""Synthetic knowledge graphs and their query splits (no Ray, no MLflow here)."""

from rdt_core.data.kg import KnowledgeGraph
from rdt_core.data.paper import PaperData, PaperFormatError, PaperVocabulary, read_paper_data
from rdt_core.data.queries import QuerySet, Splits, build_splits
from rdt_core.data.splits import load_splits
from rdt_core.data.tokens import Vocabulary

__all__ = [
    "KnowledgeGraph", "PaperData", "PaperFormatError", "PaperVocabulary", "QuerySet", "Splits", "Vocabulary",
    "build_splits", "load_splits", "read_paper_data",
]
