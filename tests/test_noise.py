"""Each trial's own dropout (ftvar.train.noise) and its own matmul precision (issue 20, items 1 and 2)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.models.distilbert import DistilBertConfig, DistilBertForSequenceClassification

from ftvar.train import noise
from ftvar.train.engine import MATMUL, precision_used


def distilbert(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=2)
    return DistilBertForSequenceClassification(config)


def bert(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    return BertForSequenceClassification(config)


def batch(pad: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0
    if pad:
        ids = torch.cat([ids, torch.zeros(4, pad, dtype=torch.long)], 1)
        mask = torch.cat([mask, torch.zeros(4, pad, dtype=torch.long)], 1)
    return {"input_ids": ids, "attention_mask": mask}


def test_keep_masks_keep_the_right_share_and_depend_on_seed_step_and_site() -> None:
    key = torch.tensor(12345, dtype=torch.int64)
    keep = noise.keep_mask(torch.Size([64, 12, 40, 40]), key, 0.1, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.9) < 0.002  # 1.2 M elements; a fixed hash: no luck involved
    counter = noise.NoiseState(3)
    masks = {}
    for seed, step, site in [(3, 0, 0), (3, 1, 0), (3, 0, 1), (4, 0, 0)]:
        counter.seed.fill_(seed)
        counter.at(step)
        masks[seed, step, site] = noise.keep_mask(torch.Size([8, 16, 32]), counter.key(site), 0.5, key.device)
    values = list(masks.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
    # a mask is a function of positions: the first rows and columns of a larger tensor hold the same mask
    small = noise.keep_mask(torch.Size([8, 16, 32]), key, 0.3, key.device)
    large = noise.keep_mask(torch.Size([8, 24, 32]), key, 0.3, key.device)
    assert torch.equal(large[:, :16], small)


@pytest.mark.parametrize("build", [distilbert, bert])
def test_installed_dropout_is_owned_padding_free_and_attention_too(build: object) -> None:
    model = build()  # type: ignore[operator]
    counter = noise.install(model, seed=7)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == noise.ATTENTION
    model.train()
    counter.at(3)
    check = noise.DrawCheck()
    inputs = batch()
    with check.first():
        short = model(**inputs).logits
    assert check.verdict() == "owned"  # nothing drew from torch's generator
    assert torch.allclose(model(**batch(pad=7)).logits, short, atol=1e-5)  # padding changes no mask
    counter.at(4)
    assert not torch.allclose(model(**batch()).logits, short, atol=1e-5)  # another step, other masks
    model.eval()
    assert torch.allclose(model(**batch()).logits, model(**batch(pad=7)).logits, atol=1e-5)


def test_a_model_that_draws_from_torchs_generator_is_named() -> None:
    class Functional(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.dropout(x, 0.1, training=True) + torch.randn_like(x)

    check = noise.DrawCheck()
    with check.first():
        Functional()(torch.ones(3))
    verdict = check.verdict()
    assert verdict.startswith("shared: the model draws ")
    assert "randn_like" in verdict and "bernoulli" in verdict


def test_the_recorded_precision_is_the_one_used() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_used("auto", cpu) == {"precision": "fp32", "matmul": "ieee"}
    assert precision_used("tf32", cpu) == {"precision": "fp32", "matmul": "ieee"}  # a CPU has no TF32
    assert precision_used("tf32", cuda) == {"precision": "fp32", "matmul": "tf32"}
    assert precision_used("fp32", cuda) == {"precision": "fp32", "matmul": "ieee"}
    assert precision_used("fp16", cuda) == {"precision": "fp16", "matmul": "ieee"}


def test_a_lane_that_needs_the_other_matmul_precision_waits_and_nothing_leaks() -> None:
    """What a lane on a GPU sees (the flags are process-wide; setting them needs no GPU)."""
    cuda = torch.device("cuda")
    before = torch.backends.cuda.matmul.allow_tf32
    events: list[str] = []
    inside = threading.Event()

    def tf32_lane() -> None:
        with MATMUL.hold("tf32", cuda):
            events.append(f"tf32 in: {torch.backends.cuda.matmul.allow_tf32}")
            inside.set()
            time.sleep(0.3)
            events.append("tf32 out")

    lane = threading.Thread(target=tf32_lane)
    lane.start()
    inside.wait(5)
    with MATMUL.hold("fp32", cuda):  # waits for the tf32 lane to finish
        events.append(f"fp32 in: {torch.backends.cuda.matmul.allow_tf32}")
    lane.join(5)
    assert events == ["tf32 in: True", "tf32 out", "fp32 in: False"]
    assert torch.backends.cuda.matmul.allow_tf32 == before
