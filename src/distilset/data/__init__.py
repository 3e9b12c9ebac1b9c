"""Dataset sources, readers and preprocessing. Start with ``load_dataset(name)``."""

from distilset.data.dataset import Dataset, DatasetInfo, Normalization, from_arrays
from distilset.data.registry import SOURCES, default_root, list_datasets, load_dataset
from distilset.data.zca import ZCA

__all__ = [
    "Dataset",
    "DatasetInfo",
    "Normalization",
    "ZCA",
    "SOURCES",
    "default_root",
    "from_arrays",
    "list_datasets",
    "load_dataset",
]
