"""The remedies of failed runs (issue 23): re-initialised top layers, layer-wise learning rates, Adam without
bias correction; as settings (hashed only off their defaults) and as axes. Tiny models built here, no
training but a few hand-checked optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftvar.errors import FtvarError, StudyError
from ftvar.study.config import LAYERED_MODELS, OTHER_SWEEPABLE, load_study
from ftvar.study.stackable import not_stackable, stack_key
from ftvar.study.trial import expand
from ftvar.train.engine import make_optimizer, param_groups, set_learning_rate
from ftvar.train.optim import AdamWithoutBiasCorrection
from ftvar.train.remedies import ENCODERS, encoder_parts, layer_depths, reinit_top_layers

TINY = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32}


def tiny_bert(tmp_path: Path, kind: str = "bert") -> torch.nn.Module:
    """A tiny pretrained-like classifier: saved, then loaded with from_pretrained (which marks what it loaded
    as initialised, as it does for a real checkpoint)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if kind == "distilbert":
        config = AutoConfig.for_model(
            "distilbert", vocab_size=50, dim=16, n_layers=3, n_heads=2, hidden_dim=32
        )
    else:
        config = AutoConfig.for_model(kind, vocab_size=50, max_position_embeddings=40, **TINY)
    torch.manual_seed(0)
    folder = tmp_path / kind
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    model: torch.nn.Module = AutoModelForSequenceClassification.from_pretrained(folder)
    return model


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_reinit_redraws_the_top_layers_and_the_pooler_and_nothing_below(tmp_path: Path, kind: str) -> None:
    model = tiny_bert(tmp_path, kind)
    before = state(model)
    names = reinit_top_layers(model, 2, init_seed=7)
    after = state(model)
    parts = encoder_parts(model, "test")
    layers = {id(p) for layer in parts.layers[-2:] for p in layer.parameters()}
    pooled = {id(p) for p in parts.pooler.parameters()} if parts.pooler is not None else set()
    by_id = {id(p): n for n, p in model.named_parameters()}
    redrawn = {by_id[i] for i in layers | pooled}
    assert len(names) == 2 + (parts.pooler is not None)
    for name in by_id.values():
        changed = not torch.equal(before[name], after[name])
        if name in redrawn and ("weight" in name and "LayerNorm" not in name and "layer_norm" not in name):
            assert changed, name  # matrices drawn afresh from normal(0, initializer_range)
        if name not in redrawn:
            assert not changed, name  # the lower layers, the embeddings and the head keep the checkpoint's
    # the model's own initialisation: zero biases, unit LayerNorms, weights of the config's spread
    top = parts.layers[-1]
    linear = next(m for m in top.modules() if isinstance(m, torch.nn.Linear))
    assert torch.count_nonzero(linear.bias) == 0
    assert float(linear.weight.detach().std()) == pytest.approx(0.02, rel=0.35)
    # a pure function of the init seed: again gives the same weights, another seed others
    again = tiny_bert(tmp_path / "again", kind)
    reinit_top_layers(again, 2, init_seed=7)
    other = tiny_bert(tmp_path / "other", kind)
    reinit_top_layers(other, 2, init_seed=8)
    name = by_id[id(linear.weight)]
    assert torch.equal(state(again)[name], after[name]) and not torch.equal(state(other)[name], after[name])


def test_reinit_and_layer_decay_name_the_models_they_know(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    gpt = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20))
    with pytest.raises(
        FtvarError, match=r"train\.reinit_layers does not know .*'gpt2'.*bert, distilbert, roberta"
    ):
        reinit_top_layers(gpt, 1, 0)
    with pytest.raises(FtvarError, match=r"train\.layer_decay does not know"):
        layer_depths(gpt)
    with pytest.raises(FtvarError, match="only 3 encoder layers"):
        reinit_top_layers(tiny_bert(tmp_path), 4, 0)
    assert tuple(ENCODERS) == LAYERED_MODELS  # the study file's check knows the same models
    # a study says so before anything runs, where it can read the model's config.json
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    with pytest.raises(StudyError, match=r"train.layer_decay does not know .*'gpt2' model \(gpt\)"):
        load_study("paper", [f"model.name_or_path={folder}", "train.layer_decay=0.9"])
    with pytest.raises(StudyError, match=r"train\.reinit_layers = 5, but .* has only 2 encoder layers"):
        load_study("smoke", ["grid.train.reinit_layers=[0, 5]"])


def test_layer_decay_gives_each_layer_its_learning_rate(tmp_path: Path) -> None:
    model = tiny_bert(tmp_path)
    depth = layer_depths(model)
    named = dict(model.named_parameters())
    assert depth[id(named["classifier.weight"])] == depth[id(named["bert.pooler.dense.weight"])] == 0
    assert depth[id(named["bert.encoder.layer.2.output.dense.weight"])] == 1  # the top layer
    assert depth[id(named["bert.encoder.layer.0.output.dense.weight"])] == 3
    assert depth[id(named["bert.embeddings.word_embeddings.weight"])] == 4  # lowest
    optimizer = make_optimizer(model, 1e-3, 0.01, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in named.items():
        assert lr_of[id(p)] == pytest.approx(1e-3 * 0.5 ** depth[id(p)]), name
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert wd_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == 0.01
    assert wd_of[id(named["bert.encoder.layer.1.output.dense.bias"])] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)
    # the schedule scales every group alike (the plain loop's LambdaLR, the fast loop's set_learning_rate)
    set_learning_rate(optimizer, 2e-3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(2e-3 * 0.5**3)
    # on a GPU each group reads a device tensor of its own, filled in place (CUDA graphs read them)
    shared = torch.tensor(1e-3)
    groups = param_groups(model, 0.01, 0.5)
    for g in groups:
        g["lr"] = shared if g["lr_scale"] == 1.0 else shared * g["lr_scale"]
    tensors = torch.optim.AdamW(groups, lr=shared)
    set_learning_rate(tensors, 4e-3)
    assert {round(float(g["lr"]) / 4e-3, 6) for g in tensors.param_groups} == {1.0, 0.5, 0.25, 0.125, 0.0625}
    # without decay: the two groups of before, in the model's order
    assert [len(g["params"]) for g in param_groups(model, 0.01)] == [
        sum(1 for n, p in named.items() if p.ndim >= 2 and "norm" not in n.lower()),
        sum(1 for n, p in named.items() if not (p.ndim >= 2 and "norm" not in n.lower())),
    ]


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_adam_without_bias_correction_matches_an_update_computed_by_hand(tensor_lr: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
    opt = AdamWithoutBiasCorrection(
        [{"params": [w], "weight_decay": wd}], lr=torch.tensor(lr) if tensor_lr else lr
    )
    ref, m, v = w.detach().clone(), torch.zeros(3, 4), torch.zeros(3, 4)
    for _ in range(3):
        g = torch.randn(3, 4)
        w.grad = g.clone()
        opt.step()
        # BERT's Adam: no m / (1 − β1^t), no v / (1 − β2^t); decoupled weight decay
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr * (m / (v.sqrt() + eps) + wd * ref)
    assert torch.allclose(w.detach(), ref, rtol=1e-5, atol=1e-7)
    assert set(opt.state[w]) == {"step", "exp_avg", "exp_avg_sq"} and float(opt.state[w]["step"]) == 3
    # torch's AdamW corrects the bias: its first step moves every weight by about lr, ours by less
    w2 = torch.zeros(2, requires_grad=True)
    w2.grad = torch.tensor([1.0, -1.0])
    torch.optim.AdamW([w2], lr=0.1, weight_decay=0.0).step()
    w3 = torch.zeros(2, requires_grad=True)
    w3.grad = torch.tensor([1.0, -1.0])
    AdamWithoutBiasCorrection([w3], lr=0.1, weight_decay=0.0).step()
    assert w2.detach().abs().tolist() == pytest.approx([0.1, 0.1])
    assert w3.detach().abs().tolist() == pytest.approx([0.1 * 0.1 / 0.001**0.5] * 2, rel=1e-5)


def test_remedies_are_settings_and_axes_hashed_only_off_their_defaults() -> None:
    smoke = load_study("smoke")
    for key in ("train.reinit_layers", "train.layer_decay", "train.bias_correction"):
        assert key in OTHER_SWEEPABLE
    assert "train.eval_every" not in OTHER_SWEEPABLE  # evaluating changes no result
    # the defaults keep every study's hash (tests/test_trial.py pins them); another value is another study
    assert load_study("smoke", ["train.bias_correction=true", "train.layer_decay=1.0"]).hash == smoke.hash
    assert load_study("smoke", ["train.eval_every=5"]).hash == smoke.hash
    hashes = {
        load_study("smoke", [o]).hash
        for o in ("train.reinit_layers=1", "train.layer_decay=0.9", "train.bias_correction=false")
    }
    assert len(hashes) == 3 and smoke.hash not in hashes
    study = load_study(
        "smoke", ["grid.train.bias_correction=[true, false]", "grid.train.reinit_layers=[0, 1]"]
    )
    assert study.hash == smoke.hash  # axes leave the hash; the trial ids cover them
    trials = [t for t in expand(study) if not t.is_baseline]
    assert len(trials) == 8 * 4 and {t.params()["train.bias_correction"] for t in trials} == {True, False}
    axis = next(a for a in study.axes if a.name == "train.bias_correction")
    assert (axis.kind, axis.values) == ("categorical", (True, False))
    for bad, why in (
        ("grid.train.bias_correction=[1, 0]", "takes true/false values"),
        ("train.layer_decay=1.5", r"must be in \(0, 1\]"),
        ("train.eval_every=-1", "must be ≥ 0"),
    ):
        with pytest.raises(StudyError, match=why):
            load_study("smoke", [bad])


def test_layer_decay_trains_alone_and_the_launch_can_say_why() -> None:
    study = load_study("smoke", ["grid.train.layer_decay=[1.0, 0.8]", "grid.train.reinit_layers=[0, 1]"])
    trials = [t for t in expand(study) if not t.is_baseline]
    decayed = [t for t in trials if dict(t.extra)["train.layer_decay"] == 0.8]
    assert all(stack_key(study, t) is None for t in decayed)
    assert "two flat blocks" in str(not_stackable(study, decayed[0]))
    plain = [t for t in trials if dict(t.extra)["train.layer_decay"] == 1.0]
    plain = [t for t in plain if t.batch_size == 16 and t.epochs == 1 and t.learning_rate == 3e-4]
    keys = {stack_key(study, t) for t in plain}  # re-initialised layers may differ inside a stack
    assert len(keys) == 1 and None not in keys
