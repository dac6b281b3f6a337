"""The splits a config names: a generated graph's (``queries.build_splits``) or those of one of the paper's
data directories (``paper.paper_splits``, when ``data.paper_dir`` is set). Everything that trains or
evaluates from a config takes its splits here."""

from __future__ import annotations

from rdt_core.config import DataConfig
from rdt_core.data.paper import paper_splits
from rdt_core.data.queries import Splits, build_splits


def load_splits(config: DataConfig) -> Splits:
    return paper_splits(config) if config.paper_dir is not None else build_splits(config)
