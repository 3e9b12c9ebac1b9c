"""Shared plumbing for benchmark scripts: machine description, resumable JSON results, markdown tables."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


class ResultFile:
    """A JSON file of rows, rewritten atomically after each row so an interrupted run loses nothing."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.data = {"settings": settings, "machine": machine(), "rows": []}
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                self.data["rows"] = old["rows"]

    def has(self, key: dict) -> bool:
        return any(all(r.get(k) == v for k, v in key.items()) for r in self.data["rows"])

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)
