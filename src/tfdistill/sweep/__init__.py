"""Multi-seed sweeps: a spec (base recipe x grid) expanded into validated runs, trained sequentially in-process or
as parallel subprocesses (one per GPU), restartable at any point.

    plan = plan_sweep("reproduce/table1", ["epochs=30"])
    run_sweep(plan, jobs=2)

See :mod:`tfdistill.sweep.spec` for the spec schema and :mod:`tfdistill.sweep.runner` for how runs are skipped,
resumed and recorded as failed.
"""

from __future__ import annotations

from pathlib import Path

from .runner import (
    FAILED_MARKER,
    SPEC_FILE,
    STATE_FILE,
    Executor,
    InProcessExecutor,
    Outcome,
    SubprocessExecutor,
    Sweep,
    SweepResult,
    run_sweep,
)
from .spec import (
    GridBlock,
    MissingPresetError,
    PaperSpec,
    Plan,
    PlannedRun,
    StudentExtra,
    SweepSpec,
    expand,
    load_spec,
    missing_methods,
    paper_entry,
    spec_from_raw,
)


def plan_sweep(spec: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None) -> Plan:
    """Load a spec (path or name such as ``reproduce/table1``) and expand it with command-line ``overrides``."""
    from ..recipes import resolve_recipe

    path = resolve_recipe(str(spec))
    return expand(load_spec(path), overrides, spec_path=path, out_dir=out_dir)


__all__ = [
    "FAILED_MARKER", "SPEC_FILE", "STATE_FILE", "Executor", "InProcessExecutor", "SubprocessExecutor", "Outcome",
    "Sweep", "SweepResult", "run_sweep", "GridBlock", "MissingPresetError", "PaperSpec", "Plan", "PlannedRun",
    "StudentExtra", "SweepSpec", "expand", "load_spec", "missing_methods", "paper_entry", "spec_from_raw",
    "plan_sweep",
]
