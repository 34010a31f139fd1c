"""Moved to :mod:`tfdistill.rundir` (the run-directory rules shared by engine, sweep and report).

Kept only so that modules not yet updated (``engine/multiseed.py``, being replaced by the group engine) still
import; new code imports :mod:`tfdistill.rundir`. Delete this file once nothing imports it.
"""

from ..rundir import *  # noqa: F401,F403
from ..rundir import RunDir, device_name, git_commit  # noqa: F401
