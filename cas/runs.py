"""The files of a training run's folder, named in one place.

The trainer (:mod:`cas.train`) writes ``log.jsonl`` (one JSON record per epoch and event),
``state.pt`` (everything needed to resume), ``best.safetensors`` (the best epoch's checkpoint) and
``config.json`` (the run's settings), and stops cleanly when ``STOP`` appears. The app's job manager
adds ``job.json`` (who started the run, and its process) and ``train.out`` (the trainer's output).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOG, STATE, BEST, CONFIG, STOP = "log.jsonl", "state.pt", "best.safetensors", "config.json", "STOP"
JOB, OUTPUT = "job.json", "train.out"
# the files whose presence marks a folder as a run (one that may be listed, shown or deleted)
RUN_FILES = (JOB, LOG, CONFIG, BEST)


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the paths of its files: ``RunFolder(out).log`` is ``out / "log.jsonl"``."""

    path: Path

    def __init__(self, path):
        object.__setattr__(self, "path", Path(path))

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def stop(self) -> Path:
        return self.path / STOP

    @property
    def job(self) -> Path:
        return self.path / JOB

    @property
    def output(self) -> Path:
        return self.path / OUTPUT

    def stop_requested(self) -> bool:
        """Whether someone asked the run to stop (the ``STOP`` file exists)."""
        return self.stop.exists()

    def is_run(self) -> bool:
        """Whether the folder holds any file of a run."""
        return any((self.path / f).exists() for f in RUN_FILES)
