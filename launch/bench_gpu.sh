#!/usr/bin/env bash
# Every GPU figure and check BENCHMARKS.md asks for, in one command (a leased GPU machine's time
# is short, so the most wanted come first and a deadline skips the rest):
#
#   bash launch/bench_gpu.sh OUTDIR
#
# Writes OUTDIR/results.jsonl (one JSON record per measurement, as `python -m vit_dist.bench`
# prints it, plus the command), OUTDIR/log.txt (everything printed), OUTDIR/gpu.txt
# (nvidia-smi) and OUTDIR/runs/NAME/ (each training run's metrics, config and log; the
# checkpoints stay in the scratch directory). In order:
#   1. `bench model`, compiled: ViT-B/16 and Swin-T train/inference images/s and MFU (bf16)
#   2. real training runs on photo shards with the trainer, its data pipeline (one loader
#      worker per CPU core) and train.sync_debug=warn (each line that makes the host wait for
#      the GPU inside a train step warns once; the record counts them as sync_warnings):
#        ViT-B/16, FSDP2 under torchrun (NCCL), bf16, compiled -- the ImageNet config as is
#        Swin-T, one process, fp16 (the loss scaler on CUDA), compiled
#      each summarised by `bench run` (images/s, MFU, fraction of step time waiting for data)
#   3. `bench data`: loader images/s per worker beside torchvision ImageFolder + PIL
#   4. `bench model` eager; 5. `bench compare-timm` (ViT-B/16, both compiled)
#
# Sizes come from the environment so that CI can smoke-run the same script on CPU:
#   BENCH_BATCH (256), BENCH_IMG (224), BENCH_STEPS (20), BENCH_WARMUP (5), BENCH_PRECISION (bf16),
#   BENCH_MODELS ("vit_base_patch16_224 swin_tiny_patch4_window7_224"), BENCH_COMPARE_MODEL
#   (vit_base_patch16_224), BENCH_DATA_WORKERS (all CPU cores), BENCH_DATA_SECONDS (5),
#   BENCH_DATA_SIZE (224), BENCH_TRAIN_STEPS (50), BENCH_TRAIN_LOG_EVERY (10),
#   BENCH_TRAIN_MODELS (the two models of BENCH_MODELS), BENCH_TRAIN_PRECISIONS ("bf16 fp16"),
#   BENCH_TRAIN_LAUNCH ("torchrun single": how the i-th run starts), BENCH_DEVICE_SYNC (warn),
#   BENCH_DEADLINE_S (0 = none: seconds after which the remaining items are skipped), counted
#   from BENCH_T0 (epoch seconds; default: the script's start),
#   BENCH_SCRATCH (a temp dir), PYTHON (python3 / the repo's .venv), BENCH_ALLOW_CPU (0: without
#   a CUDA device the script refuses, exit 2; 1: it runs on the CPU, for a smoke run at toy sizes).
# Wheels in BENCH_WHEELS (./.whl, fetched by launch/gpu_wheels.sh; webdataset, wandb: the GPU
# image lacks them) are installed to /tmp/site first; BENCH_WHEELS= (empty) installs none.
set -uo pipefail

out=${1:?usage: bash launch/bench_gpu.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
: >"$out/results.jsonl"

main() {
    wheels=${BENCH_WHEELS-.whl}
    if [[ -n $wheels ]] && compgen -G "$wheels/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    py=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
    export PYTHONUNBUFFERED=1 WANDB_MODE=offline
    t_start=${BENCH_T0:-$(date +%s)}

    batch=${BENCH_BATCH:-256}
    img=${BENCH_IMG:-224}
    steps=${BENCH_STEPS:-20}
    warmup=${BENCH_WARMUP:-5}
    precision=${BENCH_PRECISION:-bf16}
    models=${BENCH_MODELS:-vit_base_patch16_224 swin_tiny_patch4_window7_224}
    compare=${BENCH_COMPARE_MODEL:-vit_base_patch16_224}
    workers=${BENCH_DATA_WORKERS:-$(nproc)}
    train_steps=${BENCH_TRAIN_STEPS:-50}
    read -r -a train_models <<<"${BENCH_TRAIN_MODELS:-$models}"
    read -r -a train_precisions <<<"${BENCH_TRAIN_PRECISIONS:-bf16 fp16}"
    read -r -a train_launch <<<"${BENCH_TRAIN_LAUNCH:-torchrun single}"
    deadline=${BENCH_DEADLINE_S:-0}
    scratch=${BENCH_SCRATCH:-$(mktemp -d)}

    (nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "no nvidia-smi") >"$out/gpu.txt" 2>&1
    echo "[bench_gpu] $(date -Is) $(tail -n 1 "$out/gpu.txt"); $(nproc) CPU cores; python $py"
    "$py" -c "import torch; print('[bench_gpu] torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    # Without a GPU the defaults (ViT-B/16 at batch 256, compiled) would grind on the CPU for
    # hours: refuse, unless this is the CPU smoke run of the script itself (CI: toy sizes).
    if [[ ${BENCH_ALLOW_CPU:-0} != 1 ]] && ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "bench_gpu: no CUDA device visible to torch: run this on a GPU machine (BENCH_ALLOW_CPU=1 with toy BENCH_* sizes smoke-runs it on the CPU)" >&2
        exit 2
    fi

    failed=0
    skipped=0
    in_time() { # in_time WHAT: false (and counted) once the deadline has passed
        local t=$(($(date +%s) - t_start))
        if ((deadline > 0 && t >= deadline)); then
            echo "[bench_gpu] SKIPPED (deadline ${deadline}s, at ${t}s): $1"
            skipped=$((skipped + 1))
            return 1
        fi
    }
    record() { # record JSON_FILE COMMAND [EXTRA_JSON]: append the result, its command and extras
        "$py" -c 'import json, sys; r = json.load(open(sys.argv[1])); r["command"] = sys.argv[2]; r.update(json.loads(sys.argv[3])); print(json.dumps(r))' \
            "$1" "$2" "${3:-"{}"}" >>"$out/results.jsonl"
    }
    bench() { # bench ARGS...: one measurement
        in_time "bench $*" || return 0
        local tmp
        tmp=$(mktemp)
        echo "[bench_gpu] $(date +%T) python -m vit_dist.bench $*"
        if "$py" -m vit_dist.bench "$@" --out "$tmp"; then
            record "$tmp" "python -m vit_dist.bench $*"
        else
            echo "[bench_gpu] FAILED: python -m vit_dist.bench $*"
            failed=$((failed + 1))
        fi
        rm -f "$tmp"
    }
    config_of() { # the repo config for a model (its recipe), else the ViT-B one with model.name
        case $1 in
        vit_base_patch16_224) echo "configs/imagenet_vit_base.yaml" ;;
        swin_tiny_patch4_window7_224) echo "configs/imagenet_swin_tiny.yaml" ;;
        *) echo "configs/imagenet_vit_base.yaml model.name=$1" ;;
        esac
    }
    shards=""
    make_shards() { # photo shards for one epoch of every training run (4 shards per loader worker)
        local dir=$scratch/photo-shards n=$(((train_steps + 2) * batch))
        echo "[bench_gpu] $(date +%T) writing $n photo samples as shards to $dir"
        rm -rf "$scratch/photo-folder" "$dir"
        "$py" -c 'import sys; from vit_dist.data.bench import photo_folder; photo_folder(sys.argv[1], int(sys.argv[2]), 100)' \
            "$scratch/photo-folder" "$n" &&
            "$py" -m vit_dist.data.shards --from-folder "$scratch/photo-folder" --out "$dir" \
                --shard-samples $(((n + 4 * workers - 1) / (4 * workers))) --workers "$workers" >/dev/null &&
            rm -rf "$scratch/photo-folder" && shards=$dir
    }
    train() { # train NAME LAUNCH MODEL PRECISION: a real run, summarised by `bench run`
        local name=$1 launch=$2 model=$3 prec=$4
        in_time "train $name" || return 0
        [[ -n $shards ]] || make_shards || {
            echo "[bench_gpu] FAILED: writing the photo shards"
            failed=$((failed + 1))
            return 0
        }
        local run=$scratch/runs/$name launcher=("$py")
        [[ $launch == torchrun ]] && launcher=("$py" -m torch.distributed.run --standalone --nproc_per_node 1)
        # shellcheck disable=SC2046  # config_of gives the config file and maybe one override
        local cmd=(-m vit_dist.train --config $(config_of "$model") data.train="$shards" data.val=null
            data.workers="$workers" data.img_size="$img" train.batch_size="$batch" train.steps="$train_steps"
            precision="$prec" parallel.compile=true logging.every="${BENCH_TRAIN_LOG_EVERY:-10}"
            logging.progress=lines checkpoint.every=1000000 train.sync_debug="${BENCH_DEVICE_SYNC:-warn}"
            output_dir="$run")
        [[ $launch == torchrun ]] && cmd+=(parallel.strategy=fsdp) || cmd+=(parallel.strategy=ddp)
        echo "[bench_gpu] $(date +%T) ${launcher[*]} ${cmd[*]}"
        mkdir -p "$out/runs/$name"
        if "${launcher[@]}" "${cmd[@]}" >"$out/runs/$name/train.log" 2>&1; then
            local tmp
            tmp=$(mktemp)
            # In warn mode each line that synchronised warns once: count them, show them.
            local syncs
            syncs=$(grep -c "synchronizing CUDA operation" "$out/runs/$name/train.log")
            ((syncs > 0)) && grep -B1 -A1 "synchronizing CUDA operation" "$out/runs/$name/train.log" | head -n 30
            if "$py" -m vit_dist.bench run "$run" --skip 1 --out "$tmp"; then
                record "$tmp" "${launcher[*]} ${cmd[*]}" "{\"sync_warnings\": $syncs}"
            else
                failed=$((failed + 1))
            fi
            rm -f "$tmp"
        else
            echo "[bench_gpu] FAILED: $name (the last lines of its log:)"
            tail -n 15 "$out/runs/$name/train.log"
            failed=$((failed + 1))
        fi
        cp "$run"/{metrics.jsonl,run_info.json,config.yaml} "$out/runs/$name/" 2>/dev/null
    }

    common=(--batch-size "$batch" --img-size "$img" --steps "$steps" --warmup "$warmup" --precision "$precision")
    for model in $models; do
        bench model --model "$model" "${common[@]}" --compile
    done
    for i in "${!train_models[@]}"; do
        m=${train_models[$i]} p=${train_precisions[$i]:-$precision} l=${train_launch[$i]:-single}
        train "$i-$m-$p-$l" "$l" "$m" "$p"
    done
    bench data --size "${BENCH_DATA_SIZE:-224}" --scales 1 --workers "$workers" --seconds "${BENCH_DATA_SECONDS:-5}"
    for model in $models; do
        bench model --model "$model" "${common[@]}"
    done
    bench compare-timm --model "$compare" "${common[@]}" --compile

    [[ -z ${BENCH_SCRATCH:-} ]] && rm -rf "$scratch"
    echo "[bench_gpu] $(date -Is) done in $(($(date +%s) - t_start)) s: $(wc -l <"$out/results.jsonl") results in $out/results.jsonl, $failed failed, $skipped skipped"
    return $((failed > 0))
}

main 2>&1 | tee "$out/log.txt" # a pipeline, so tee has written everything when the script ends
exit "${PIPESTATUS[0]}"
