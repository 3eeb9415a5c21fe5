"""Where the Hugging Face cache is (`HF_HOME`): the one place trials read models and Hub datasets from.

Standard library only, so that the login node's launch can name it without importing datasets.
"""

from __future__ import annotations

import os
from pathlib import Path


def hf_home() -> str:
    return os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
