"""Each trial's own randomness: dropout masks as a hash of (the trial's seed, step, dropout site, position).

torch's dropout draws from the process's generator. In a pack's lanes (threads of one process) the masks then
depend on how the lanes interleave, and a stack (one vmapped model) draws one stream for all its members, so a
trial's numbers depended on how it was run. Here every `nn.Dropout` of the model and the dropout of the
attention probabilities draw their masks from a counter-based hash instead: element (row, …, column) of the
tensor at dropout site s in training step t of a trial with seed k is kept when
`hash(k, t, s, position) ≥ p · 2²⁴`. The same trial gets the same masks alone, in lanes, in a stack, resumed
after a kill, eagerly or replayed from a CUDA graph (the seed and the step are device tensors, buffers of the
model that a graph reads and a stack stacks per member), and whatever a batch is padded to (positions count
from the start of each row; padding only appends positions).

Hand-written because torch has no random function of tensor-valued seeds and counters that vmap and CUDA
graphs accept (`torch.rand(generator=…)` is neither batched per member nor independent of the padded shape).
The hash is Thomas Mueller's 32-bit integer hash, computed in int64 so that no product overflows; with the
key-free parts of a mask kept per shape on a CPU, the fast engine trains as fast as with torch's dropout
(docs/benchmarks.md).

What it cannot own it reports: `draws_elsewhere` runs one training step under a dispatch mode that sees every
aten operation and names any random one (a model calling `F.dropout` itself, attention that drops out inside a
fused kernel); the record then says that the trial's randomness is shared with its process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

M32 = 0xFFFFFFFF
MUELLER = 0x45D9F3B  # < 2**27: a product with a 32-bit value stays below 2**59
SPREAD = 0x2C1B3C6D  # the element-wise round's multiplier (also < 2**31)
POSITION_BITS = 16  # each leading coordinate gets 16 bits of the row key (rows, heads, positions < 65536)
ATTENTION = "ftvar"  # the name of the attention function registered with transformers


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values in [0, 2³²) (two multiply-xorshift rounds)."""
    x = (((x >> 16) ^ x) * MUELLER) & M32
    x = (((x >> 16) ^ x) * MUELLER) & M32
    return (x >> 16) ^ x


class NoiseState(nn.Module):
    """The trial's dropout counter: its seed and the current training step, as int64 buffers (not saved in the
    state dict: a checkpoint's step says where the counter is)."""

    seed: torch.Tensor
    step: torch.Tensor

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.int64), persistent=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64), persistent=False)
        self.batched = False  # inside a stack's vmap: attention always takes the explicit (batchable) path

    def at(self, step: int) -> None:
        """Set the step that the next forward's masks belong to (a device write: a graph reads it)."""
        self.step.fill_(step)

    def key(self, site: int) -> torch.Tensor:
        """The site's key for this step, a 0-d int64 in [0, 2³²)."""
        seed = self.seed & M32
        return _mix(_mix(_mix(seed ^ (site * 0x9E3779B1 & M32)) ^ (self.step & M32)) ^ (self.seed >> 32))


def keep_mask(shape: torch.Size, key: torch.Tensor, p: float, device: torch.device) -> torch.Tensor:
    """Which elements of a tensor of `shape` dropout keeps (bool), from the site's key: a function of each
    element's coordinates only, so a row's mask does not depend on how far it is padded."""
    *lead, width = shape
    rows, columns = _coordinates(tuple(lead), width, device)
    h = _mix(rows ^ key)[..., None] ^ columns
    h.mul_(SPREAD).bitwise_and_(M32)  # in place: the big tensor's passes are most of a mask's cost on a CPU
    h ^= h >> 15
    return h.bitwise_and_(0xFFFFFF) >= int(p * (1 << 24))


_COORDINATES: dict[tuple[tuple[int, ...], int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
KEPT_BYTES_MAX = 64 << 20  # at most 64 MiB kept (an attention mask's rows at bs 32, 12 heads, 128: 0.4 MiB)


def _coordinates(
    lead: tuple[int, ...], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The key-free parts of a mask of shape (*lead, width): each row's coordinates hashed, and each column's.
    They depend on the shape alone, so on a CPU they are kept (up to KEPT_BYTES_MAX: an entry per batch size
    and length), which makes a mask cost what torch's dropout costs (docs/benchmarks.md). Not on a GPU: a
    CUDA graph reads the memory it was captured with, which a kept tensor dropped here would give back."""
    found = _COORDINATES.get((lead, width, device))
    if found is not None:
        return found
    row = torch.zeros((), dtype=torch.int64, device=device)
    for i, n in enumerate(lead):
        coordinate = torch.arange(n, dtype=torch.int64, device=device).view(n, *([1] * (len(lead) - i - 1)))
        row = (row << POSITION_BITS) + coordinate  # rows < 2**16 per leading dim: at most 3 leading dims fit
    column = torch.arange(width, dtype=torch.int64, device=device) + 0x7F4A7C15
    made = (_mix((row & M32) ^ (row >> 32)), _mix(column))
    if device.type == "cpu":
        if _bytes(made, *_COORDINATES.values()) > KEPT_BYTES_MAX:  # over the budget: start over
            _COORDINATES.clear()
        _COORDINATES[(lead, width, device)] = made
    return made


def _bytes(*kept: tuple[torch.Tensor, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for pair in kept for t in pair)


def drop(x: torch.Tensor, p: float, noise: NoiseState, site: int) -> torch.Tensor:
    """Inverted dropout of `x` with the trial's mask for `site`."""
    if p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = keep_mask(x.shape, noise.key(site), p, x.device)
    return x * keep * (1.0 / (1.0 - p))


class OwnedDropout(nn.Module):
    """`nn.Dropout` with the trial's own masks (see the module docstring); identity in eval mode."""

    noise: NoiseState

    def __init__(self, p: float, site: int, noise: NoiseState) -> None:
        super().__init__()
        self.p, self.site = p, site
        object.__setattr__(self, "noise", noise)  # a reference, not a submodule: the model holds it once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return drop(x, self.p, self.noise, self.site)

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site}"


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention function for models with ftvar's dropout: softmax(q·kᵀ·scale + mask), the
    trial's dropout on the probabilities, times v. Without dropout (evaluation) it is transformers' SDPA,
    except inside a stack (vmap), where the explicit form batches over the members."""
    own = getattr(module, "dropout", None)
    noise = own.noise if isinstance(own, OwnedDropout) else None
    if dropout == 0.0 and (noise is None or not noise.batched):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs
        )
    if dropout > 0.0 and noise is None:
        raise RuntimeError(
            f"{type(module).__name__} has no ftvar dropout to draw its attention dropout from; "
            "install_owned_dropout was not applied to this model"
        )
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped-query attention: repeat the key/value heads
        repeat = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout > 0.0 and module.training:
        assert own is not None and noise is not None
        weights = drop(weights, dropout, noise, own.site)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register_attention() -> None:
    """`attention` under transformers' name ATTENTION, with the eager form of the mask (additive, 4-D)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, eager_mask)


def install(model: nn.Module, seed: int) -> NoiseState:
    """Give `model` the trial's own dropout: every `nn.Dropout` becomes an `OwnedDropout` (a site each, in the
    model's module order), the attention runs through `attention` (where the model supports transformers'
    attention interface), and the counter is `model.ftvar_noise`. Returns the counter."""
    noise = NoiseState(seed)
    site = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, OwnedDropout(float(child.p), site, noise))
                site += 1
    model.add_module("ftvar_noise", noise)
    choose = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    if callable(choose) and config is not None:
        _register_attention()
        choose(ATTENTION)
    with suppress(StopIteration):
        noise.to(next(model.parameters()).device)
    return noise


def noise_of(model: nn.Module) -> NoiseState | None:
    found = getattr(model, "ftvar_noise", None)
    return found if isinstance(found, NoiseState) else None


def ensure(model: nn.Module, seed: int | None) -> NoiseState:
    """The model's counter, installing the trial's own dropout first if it has none (what every engine does
    before it trains: a model built anywhere trains with its trial's masks)."""
    return noise_of(model) or install(model, seed if seed is not None else 0)


# aten operations that draw from a generator (the dispatcher's names, overloads stripped)
RANDOM_OPS = re.compile(
    r"^(bernoulli|rand|randn|randint|randperm|rand_like|randn_like|randint_like|normal|uniform|exponential"
    r"|multinomial|random|cauchy|geometric|log_normal|native_dropout|dropout|feature_dropout|alpha_dropout"
    r"|rrelu_with_noise|_fused_dropout|_standard_gamma|_sample_dirichlet|poisson)_?$"
)
ATTENTION_WITH_DROPOUT = re.compile(r"^_(scaled_dot_product|flash|efficient)\w*attention\w*$")


class _RandomOps(TorchDispatchMode):
    """Records the random aten operations run under it (and fused attention with dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = func._schema.name.split("::")[-1]
        if RANDOM_OPS.match(name):
            self.found.append(name)
        elif ATTENTION_WITH_DROPOUT.match(name):
            p = (kwargs or {}).get("dropout_p", args[4] if len(args) > 4 else 0.0)
            if isinstance(p, float) and p > 0.0:
                self.found.append(name)
        return func(*args, **(kwargs or {}))


def randomness(found: list[str]) -> str:
    """What a record says of its trial's randomness."""
    if not found:
        return "owned"
    return "shared: the model draws " + ", ".join(f"aten.{n}" for n in found) + " from torch's generator"


class DrawCheck:
    """Watches the first training step of a run for random draws the trial does not own (one step is enough:
    every step runs the same operations); `verdict()` is what the record says."""

    def __init__(self) -> None:
        self.found: list[str] | None = None
        self._mode: _RandomOps | None = None

    @contextmanager
    def first(self) -> Iterator[None]:
        """Watch the block if no step was watched yet."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        """Start watching (for loops that are not one block, as the Trainer's callbacks)."""
        if self.found is None and self._mode is None:
            self._mode = _RandomOps()
            self._mode.__enter__()

    def end(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.found, self._mode = list(dict.fromkeys(self._mode.found)), None

    def verdict(self) -> str:
        return randomness(self.found or [])
