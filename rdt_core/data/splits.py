"""The splits a config names: a generated graph's (``queries.build_splits``) or those of one of the paper's
data directories (``paper.paper_splits``, when ``data.paper_dir`` is set). Everything that trains or
evaluates from a config takes its splits here, and a sweep checks each trial's data here before it starts."""

from __future__ import annotations

from rdt_core.config import DataConfig
from rdt_core.data.paper import paper_splits
from rdt_core.data.queries import Splits, build_splits, check_splits


def load_splits(config: DataConfig) -> Splits:
    return paper_splits(config) if config.paper_dir is not None else build_splits(config)


def check_data(config: DataConfig) -> None:
    """A ``ConfigError`` naming the key where the config's splits cannot be made: a paper directory is read
    whole; a generated graph's queries are counted, not drawn (``queries.check_splits``)."""
    if config.paper_dir is not None:
        paper_splits(config)
    else:
        check_splits(config)
