"""Training: the only part of ftvar that imports torch, transformers and datasets.

Import it lazily (inside a job or a command), never at the top of a module the collector uses.
"""

import datasets
import transformers

datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()
transformers.logging.set_verbosity_error()

from ftvar.train.data import is_prepared, prefetch, prepare  # noqa: E402
from ftvar.train.runner import run_trial  # noqa: E402

__all__ = ["is_prepared", "prefetch", "prepare", "run_trial"]
