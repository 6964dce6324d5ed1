"""Reader registry: `format` name -> function(DatasetConfig, ErrorPolicy) -> RawData.

Each reader lives in its own module and is imported only when used, so a format's
optional dependencies never burden the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from dmesr.errors import ConfigError

if TYPE_CHECKING:
    from dmesr.data.schema import DatasetConfig, RawData
    from dmesr.errors import ErrorPolicy

Reader = Callable[["DatasetConfig", "ErrorPolicy"], "RawData"]

# format name -> "module:function"
READERS: dict[str, str] = {
    "recbole_atomic": "dmesr.data.readers.movielens:read_recbole_atomic",
    "movielens_100k": "dmesr.data.readers.movielens:read_ml100k",
    "movielens_1m": "dmesr.data.readers.movielens:read_ml1m",
    "ml100k_tmdb": "dmesr.data.readers.movielens:read_ml100k_tmdb",
    "amazon2014": "dmesr.data.readers.amazon:read_amazon2014",
    "amazon2018": "dmesr.data.readers.amazon:read_amazon2018",
    "amazon2023": "dmesr.data.readers.amazon:read_amazon2023",
    "yelp": "dmesr.data.readers.yelp:read_yelp",
    "generic": "dmesr.data.readers.generic:read_generic",
}


def get_reader(fmt: str) -> Reader:
    if fmt not in READERS:
        known = ", ".join(sorted(READERS))
        raise ConfigError(f"unknown dataset format '{fmt}' (known: {known})")
    module, _, func = READERS[fmt].partition(":")
    return getattr(importlib.import_module(module), func)
