#!/usr/bin/env bash
# Pack what a training cycle on a lent GPU needs and the repository does not hold, into
# .cache/device/ (ignored by git). A device call carries at most 64 MiB besides the
# repository, so the embedded model's GGUF (98 MB) travels in three parts, one per call.
#   gguf-1, gguf-2: one part each;  gguf-3: the last part, the SQuAD file and the wheels of
#   the packages the device image lacks (see docs/training.md, "On a lent GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SQUAD=${SQUAD:-../shared/data/squad/dev-v1.1.json.gz}
out=.cache/device
rm -rf "$out" && mkdir -p "$out/gguf-1" "$out/gguf-2" "$out/gguf-3/wheels"
gguf=$($PYTHON -c "from doc2lora_rag.base_model.loading import embedded_gguf_path; print(embedded_gguf_path())")
size=$(stat -c %s "$gguf")
part=$(( (size + 2) / 3 ))
split -b "$part" -d -a 1 "$gguf" "$out/part-"
mv "$out/part-0" "$out/gguf-1/" && mv "$out/part-1" "$out/gguf-2/" && mv "$out/part-2" "$out/gguf-3/"
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$out/gguf-3/gguf.sha256"
cp "$SQUAD" "$out/gguf-3/"
# The device's Python is 3.12 on x86-64; these are pure-Python wheels.
$PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$out/gguf-3/wheels" \
    diskcache gguf bm25s platformdirs
du -sh "$out"/*
