"""distilset: dataset distillation in PyTorch, evaluated under one honest protocol.

import distilset as ds
data = ds.load_dataset("digits")
syn = ds.distill("dd", data)                 # defaults resolved from the dataset
print(ds.evaluate(syn, data, repeats=5))     # trains fresh nets by the set's own recipe
syn.save("out/"); ds.SyntheticSet.load("out/")
"""

from distilset.baselines import baseline, random_real_like
from distilset.data import Dataset, Normalization, list_datasets, load_dataset
from distilset.errors import ConfigError, DistilsetError
from distilset.evaluate import EvalResult, evaluate, evaluate_nets, record_evaluation
from distilset.exchange import export_set, import_set
from distilset.methods import distill, get_method, list_methods, register_method
from distilset.methods.experts import ExpertBuffer, ExpertConfig, train_experts
from distilset.nets import create_net, list_nets
from distilset.recipes import Replay, Standard, Teacher
from distilset.relabel import relabel
from distilset.report import report
from distilset.scores import Scores, record_scores, scores
from distilset.synset import SyntheticSet
from distilset.teach import load_model, teach
from distilset.teachers import TeacherConfig, TeacherNet, load_teacher, train_teacher
from distilset.train import fit

__version__ = "0.3.0"
__all__ = [
    "ConfigError",
    "Dataset",
    "DistilsetError",
    "EvalResult",
    "ExpertBuffer",
    "ExpertConfig",
    "Normalization",
    "Replay",
    "Scores",
    "Standard",
    "SyntheticSet",
    "Teacher",
    "TeacherConfig",
    "TeacherNet",
    "baseline",
    "create_net",
    "distill",
    "evaluate",
    "evaluate_nets",
    "export_set",
    "fit",
    "get_method",
    "import_set",
    "list_datasets",
    "list_methods",
    "list_nets",
    "load_dataset",
    "load_model",
    "load_teacher",
    "random_real_like",
    "record_evaluation",
    "record_scores",
    "register_method",
    "relabel",
    "report",
    "scores",
    "teach",
    "train_experts",
    "train_teacher",
]
