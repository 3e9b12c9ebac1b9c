"""The names of the files distilset writes, in one place.

A set directory (``distill``, ``baseline``, ``import``, ``relabel``):

- ``synset.safetensors`` / ``synset.json``: the set's tensors and its description (``distilset.synset``);
- ``grid.png`` (and ``tiles.png`` for a texture): pictures of it;
- ``history.json``: one row of metrics per outer iteration; ``checkpoint/state.pt``: the run's state;
- ``evaluations.json`` / ``scores.json``: the records of ``evaluate --save`` and ``evaluate --scores --save``;
- ``teacher.safetensors`` / ``teacher.json``: the teacher a teacher-recipe set carries; ``views.safetensors``:
  relabelled views; ``labels.json``: the soft labels of an export;
- ``nearest_words.txt`` / ``nearest_sentences.txt``: a text set's items decoded;
- ``OUT/experts/`` and ``OUT/teacher/``: caches a run makes and later runs reuse (MTT's experts, the teacher).

A teacher directory (``distilset teacher``) holds the teacher files and ``checkpoint/teacher.pt``; an experts
directory ``manifest.json`` and one file per expert; a ``teach`` run ``report.json``, ``labels.safetensors``,
``teach.png`` and ``models/NAME.safetensors``.
"""

from __future__ import annotations

SET_TENSORS = "synset.safetensors"
SET_META = "synset.json"
GRID = "grid.png"
TILES = "tiles.png"
HISTORY = "history.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = f"{CHECKPOINT_DIR}/state.pt"
EVALUATIONS = "evaluations.json"
SCORES = "scores.json"
TEACHER_FILE = "teacher.safetensors"
TEACHER_INFO = "teacher.json"
TEACHER_CHECKPOINT = f"{CHECKPOINT_DIR}/teacher.pt"
VIEWS_FILE = "views.safetensors"
EXPORT_LABELS = "labels.json"
NEAREST_WORDS = "nearest_words.txt"
NEAREST_SENTENCES = "nearest_sentences.txt"
EXPERTS_DIR = "experts"
EXPERTS_MANIFEST = "manifest.json"
TEACHER_DIR = "teacher"
TEACH_REPORT = "report.json"
TEACH_LABELS = "labels.safetensors"
TEACH_PICTURE = "teach.png"
TEACH_MODELS = "models"

RUN_FILES = (
    *(SET_META, SET_TENSORS, GRID, TILES, HISTORY, EVALUATIONS, SCORES),
    *(NEAREST_WORDS, NEAREST_SENTENCES, TEACHER_FILE, VIEWS_FILE, TEACHER_INFO),
    CHECKPOINT_DIR,
)
"""What a run writes into its directory: a set (with its teacher, when it has one) or a teacher (``distilset
teacher``). ``OUT/experts`` and ``OUT/teacher`` are reusable caches, not part of this list."""
CHECKPOINT_FILES = (CHECKPOINT.rpartition("/")[2], TEACHER_CHECKPOINT.rpartition("/")[2])
"""What distilset writes into ``OUT/checkpoint/`` (a run's state; a teacher's training state)."""
TEACH_FILES = (TEACH_REPORT, TEACH_LABELS, TEACH_PICTURE)
"""What a ``distilset teach`` run writes besides ``models/*.safetensors``; they count as a run's only when
``report.json`` is a teach report (names a ``system``), so a user's own ``models/`` folder is never taken for one."""
