"""distilset: dataset distillation in PyTorch, evaluated under one honest protocol.

import distilset as ds
data = ds.load_dataset("digits")
syn = ds.baseline("random", data, ipc=10)
print(ds.evaluate(syn, data, repeats=5))
syn.save("out/"); ds.SyntheticSet.load("out/")
"""

from distilset.baselines import baseline
from distilset.data import Dataset, list_datasets, load_dataset
from distilset.errors import DistilsetError
from distilset.evaluate import EvalResult, evaluate
from distilset.methods import distill
from distilset.methods.experts import ExpertBuffer, ExpertConfig, train_experts
from distilset.nets import create_net, list_nets
from distilset.synset import SyntheticSet

__version__ = "0.1.0"
__all__ = [
    "Dataset",
    "DistilsetError",
    "EvalResult",
    "ExpertBuffer",
    "ExpertConfig",
    "SyntheticSet",
    "baseline",
    "create_net",
    "distill",
    "evaluate",
    "list_datasets",
    "list_nets",
    "load_dataset",
    "train_experts",
]
