#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md asks for, in one command (a leased GPU machine's time is short):
#
#   bash launch/bench_gpu.sh OUTDIR
#
# Writes OUTDIR/results.jsonl (one JSON record per measurement, as `python -m vit_dist.bench`
# prints it, plus the command), OUTDIR/log.txt (everything printed) and OUTDIR/gpu.txt
# (nvidia-smi). Runs, in order: ViT-B/16 and Swin-T train/inference images/s and MFU in bf16,
# compiled and eager; ViT-B/16 against timm (bf16, both compiled); the data pipeline's images/s
# per loader worker on this machine's CPU cores (to compare with the model's images/s).
#
# Sizes come from the environment so that CI can smoke-run the same script on CPU:
#   BENCH_BATCH (256), BENCH_IMG (224), BENCH_STEPS (20), BENCH_WARMUP (5), BENCH_PRECISION (bf16),
#   BENCH_MODELS ("vit_base_patch16_224 swin_tiny_patch4_window7_224"), BENCH_COMPARE_MODEL
#   (vit_base_patch16_224), BENCH_DATA_WORKERS (all CPU cores), BENCH_DATA_SECONDS (5),
#   BENCH_DATA_SIZE (224), PYTHON (python3 / the repo's .venv).
# Wheels in ./.whl (webdataset, wandb; see the device notes) are installed to /tmp/site first.
set -uo pipefail

out=${1:?usage: bash launch/bench_gpu.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
: >"$out/results.jsonl"

main() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    py=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
    export PYTHONUNBUFFERED=1

    batch=${BENCH_BATCH:-256}
    img=${BENCH_IMG:-224}
    steps=${BENCH_STEPS:-20}
    warmup=${BENCH_WARMUP:-5}
    precision=${BENCH_PRECISION:-bf16}
    models=${BENCH_MODELS:-vit_base_patch16_224 swin_tiny_patch4_window7_224}
    compare=${BENCH_COMPARE_MODEL:-vit_base_patch16_224}
    workers=${BENCH_DATA_WORKERS:-$(nproc)}

    (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "no nvidia-smi") >"$out/gpu.txt" 2>&1
    echo "[bench_gpu] $(date -Is) $(cat "$out/gpu.txt" | tail -n 1); $(nproc) CPU cores; python $py"
    "$py" -c "import torch; print('[bench_gpu] torch', torch.__version__, 'cuda', torch.cuda.is_available())"

    failed=0
    bench() { # bench ARGS...: one measurement, its JSON appended to results.jsonl with the command
        local tmp
        tmp=$(mktemp)
        echo "[bench_gpu] python -m vit_dist.bench $*"
        if "$py" -m vit_dist.bench "$@" --out "$tmp"; then
            "$py" -c 'import json, sys; r = json.load(open(sys.argv[1])); r["command"] = sys.argv[2]; print(json.dumps(r))' \
                "$tmp" "python -m vit_dist.bench $*" >>"$out/results.jsonl"
        else
            echo "[bench_gpu] FAILED: python -m vit_dist.bench $*"
            failed=$((failed + 1))
        fi
        rm -f "$tmp"
    }

    common=(--batch-size "$batch" --img-size "$img" --steps "$steps" --warmup "$warmup" --precision "$precision")
    for model in $models; do
        bench model --model "$model" "${common[@]}" --compile
        bench model --model "$model" "${common[@]}"
    done
    bench compare-timm --model "$compare" "${common[@]}" --compile
    bench data --size "${BENCH_DATA_SIZE:-224}" --scales 1 --workers "$workers" --seconds "${BENCH_DATA_SECONDS:-5}"

    echo "[bench_gpu] $(date -Is) done: $(wc -l <"$out/results.jsonl") results in $out/results.jsonl, $failed failed"
    return $((failed > 0))
}

main 2>&1 | tee "$out/log.txt"  # a pipeline, so tee has written everything when the script ends
exit "${PIPESTATUS[0]}"
