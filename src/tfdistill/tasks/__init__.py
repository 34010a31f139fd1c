"""Tasks: what is specific to a kind of prediction -- the supervised loss on the logits, training accuracy, the
evaluation metrics, which of them the records keep and which one picks the best epoch (:mod:`.task`, the interface).
Two implementations: :mod:`.classification` (one label per image) and :mod:`.segmentation` (one label per pixel).
The engine, sweep and report never name a task: they ask the run's :class:`Task` (from the data set's ``task``)."""

from . import classification, segmentation  # noqa: F401  (register the tasks)
from .task import TASKS, Evaluator, Task, get_task

__all__ = ["TASKS", "Evaluator", "Task", "get_task"]
