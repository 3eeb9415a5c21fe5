"""Secrets kept out of what ftvar writes: records embed the study config with secret-looking keys and values
redacted, and `[cluster.env]` values never reach a record."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
# names of variables and keys that hold secrets (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD,
# ...; not TOKENIZERS_PARALLELISM)
SECRET_NAME_RE = re.compile(
    r"(^|[^A-Za-z])(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?)([^A-Za-z]|$)",
    re.IGNORECASE,
)
# values that look like credentials whatever their name: Hugging Face, GitHub, OpenAI-style and AWS keys,
# Slack tokens, PEM private keys
SECRET_VALUE_RE = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,})\b|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def redact(value: Any, secret: bool = False) -> Any:
    """A copy of `value` (JSON-like) with secrets replaced by "<redacted>": everything under a secret-looking
    key, strings that look like credentials, and the password of a URL."""
    if isinstance(value, dict):
        return {k: redact(v, secret or bool(SECRET_NAME_RE.search(str(k)))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secret) for v in value]
    if isinstance(value, str):
        if secret or SECRET_VALUE_RE.search(value):
            return REDACTED
        return URL_CREDENTIALS_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", value)
    return REDACTED if secret and value is not None else value


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """The study config as records embed it: `[cluster.env]` values are redacted whatever their names (they
    are written into sbatch scripts, not into the shared record), and secret-looking values anywhere."""
    out: dict[str, Any] = redact(config)
    cluster = out.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("env"), dict):
        cluster["env"] = dict.fromkeys(cluster["env"], REDACTED)
    return out
