"""Remedies of failed runs that need the encoder's layers: re-initialising the top ones, layer-wise lrs.

Mosbach et al. 2021 and Zhang et al. 2021 traced the failed runs of BERT on small GLUE tasks (accuracy at the
majority class) to the optimisation and fixed them with Adam's bias correction (ftvar.train.optim), smaller
learning rates, longer training, re-initialising the top layers (`train.reinit_layers`) and layer-wise
learning-rate decay (`train.layer_decay`). Both need to know where a model's encoder layers, pooler and
embeddings are: `encoder_parts` knows the encoders ftvar supports by their `model_type` (BERT and the
MiniLM-style models that are BERTs, DistilBERT, RoBERTa) and names them in its error for any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ftvar.errors import FtvarError

# model_type → (the encoder's layer list, its pooler or None, its embeddings), as attributes of `base_model`
ENCODERS: dict[str, tuple[str, str | None, str]] = {
    "bert": ("encoder.layer", "pooler", "embeddings"),  # BERT, and MiniLM-style models (model_type "bert")
    "distilbert": ("transformer.layer", None, "embeddings"),
    "roberta": ("encoder.layer", "pooler", "embeddings"),
}
REINIT_SEED = 0x5EED_4E17  # mixed into the init seed: the re-initialised layers' own random stream


@dataclass
class EncoderParts:
    """Where a classifier's encoder is: its layers (bottom first), pooler (None where it has none) and
    embeddings."""

    layers: list[torch.nn.Module]
    pooler: torch.nn.Module | None
    embeddings: torch.nn.Module


def _attribute(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def encoder_parts(model: torch.nn.Module, setting: str) -> EncoderParts:
    """The encoder's layers, pooler and embeddings of a transformers classifier; one `ftvar: error:` line
    (naming `setting` and the models it knows) for a model it does not know how to take apart."""
    config = getattr(model, "config", None)
    kind = str(getattr(config, "model_type", "") or "")
    known = f"{', '.join(ENCODERS)} (MiniLM-style models are bert)"
    if kind not in ENCODERS:
        raise FtvarError(
            f"{setting} does not know how to find the encoder layers of a {kind or type(model).__name__!r} "
            f"model; it knows: {known}"
        )
    base = getattr(model, "base_model", None)
    layers_at, pooler_at, embeddings_at = ENCODERS[kind]
    layers, embeddings = _attribute(base, layers_at), _attribute(base, embeddings_at)
    if not isinstance(layers, torch.nn.ModuleList) or not isinstance(embeddings, torch.nn.Module):
        raise FtvarError(
            f"{setting}: this {kind} model has no {layers_at} and {embeddings_at} where {kind} models have "
            f"them; it knows: {known}"
        )
    pooler = _attribute(base, pooler_at) if pooler_at else None
    return EncoderParts(list(layers), pooler if isinstance(pooler, torch.nn.Module) else None, embeddings)


@torch.no_grad()
def reinit_top_layers(model: torch.nn.Module, k: int, init_seed: int) -> list[str]:
    """Re-initialise the top `k` encoder layers and the pooler (where the model has one), as Zhang et al. 2021
    do, with the model's own initialisation (`_init_weights`: normal(0, initializer_range) weights, zero
    biases, unit LayerNorms) from a random stream of the trial's init seed (the process's generator is left
    as it was). Returns the names of the modules re-initialised."""
    if k <= 0:
        return []
    parts = encoder_parts(model, "train.reinit_layers")
    if k > len(parts.layers):
        raise FtvarError(
            f"train.reinit_layers = {k}, but the model has only {len(parts.layers)} encoder layers"
        )
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise FtvarError("train.reinit_layers needs a transformers model (its own _init_weights)")
    modules = [*parts.layers[-k:], *([parts.pooler] if parts.pooler is not None else [])]
    names = {id(m): n for n, m in model.named_modules()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((init_seed * 1_000_003 + REINIT_SEED) % 2**63)
        for top in modules:
            for sub in top.modules():
                # from_pretrained marks what it loaded as initialised, and transformers' init functions
                # then leave it alone: unmark it, so that _init_weights draws it afresh
                for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
                    if getattr(tensor, "_is_hf_initialized", False):
                        tensor._is_hf_initialized = False  # type: ignore[attr-defined]
                if getattr(sub, "_is_hf_initialized", False):
                    sub.__dict__["_is_hf_initialized"] = False
                init(sub)
    return [names.get(id(m), "?") for m in modules]


def layer_depths(model: torch.nn.Module) -> dict[int, int]:
    """Each parameter's depth from the top (by id): 0 for the head and the pooler, i for the i-th encoder
    layer from the top (1: the top layer), L + 1 for the embeddings of an L-layer encoder."""
    parts = encoder_parts(model, "train.layer_decay")
    n = len(parts.layers)
    depth: dict[int, int] = {id(p): 0 for p in model.parameters()}
    for i, layer in enumerate(parts.layers):
        for p in layer.parameters():
            depth[id(p)] = n - i
    for p in parts.embeddings.parameters():
        depth[id(p)] = n + 1
    return depth
