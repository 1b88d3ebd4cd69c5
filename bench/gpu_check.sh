#!/usr/bin/env bash
# One prepared pass of the GPU checks (kernel tests, attention speed, training steps in each
# precision, llama_1b throughput eager and compiled; SKIP_KERNELS / SKIP_LLAMA / SKIP_BENCH
# leave phases out), for a lent GPU machine whose image has torch and triton but not our other
# dependencies. Usage: bench/gpu_check.sh OUT_DIR [SITE_DIR DATA_DIR]
#   SITE_DIR: pure-Python packages missing there (hydra, omegaconf, antlr4), put on PYTHONPATH
#   DATA_DIR: a prepared dataset directory (data.dir), so no corpus is built there
set -u
out=${1:?output directory}; site=${2:-}; data=${3:-}
[ -n "$site" ] && export PYTHONPATH="$site"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# Editable, as in development: run from the repo root, the source tree's triforge/ would
# shadow a regular install.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.txt" 2>&1 \
    || { echo "install failed"; tail -5 "$out/install.txt"; exit 1; }
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

if [ -z "${SKIP_KERNELS:-}" ]; then
    echo "== kernel tests on the GPU (compiled Triton, not the interpreter)"
    timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/kernels 2>&1 | tail -15 \
        | tee "$out/kernels.txt"
fi

echo "== training steps: gpt2_124m shape, seq 1024, batch 16"
data_arg=(); [ -n "$data" ] && data_arg=("data.dir=$data")
# RUNS: "precision backend objective" triples (default: each precision, clm)
runs=${RUNS:-"fp32,sdpa,clm bf16,sdpa,clm bf16,triton,clm fp16,triton,clm"}
for run in $runs; do
    IFS=, read -r prec backend objective <<<"$run"
    set -- "$prec" "$backend" "$objective"
    echo "-- precision=$1 attention.backend=$2 objective=$3"
    timeout 150 python3 -m triforge.launcher.train model=gpt2_124m precision="$1" \
        attention.backend="$2" objective="$3" "${data_arg[@]}" ${EXTRA:-} trainer.seq_len=1024 \
        trainer.batch_size=16 \
        trainer.max_steps=30 trainer.log_every=10 trainer.eval_every=0 optim.warmup_steps=10 \
        logging.wandb.enabled=false logging.progress_bar=false trainer.sample_at_end=false \
        checkpoint.every=0 checkpoint.save_at_end=false checkpoint.resume=none \
        run.dir="/tmp/gpu_$1_$2_$3" 2>&1 | grep -E "^step|model |error|Error" | tee -a "$out/train.txt"
done

if [ -z "${SKIP_LLAMA:-}" ]; then
    echo "== llama_1b bf16, seq 2048, batch 8: SDPA and our kernel, eager and compiled (MFU vs 989 TFLOP/s)"
    for run in ${LLAMA_RUNS:-"sdpa,false sdpa,true triton,false triton,true"}; do
        IFS=, read -r backend compiled <<<"$run"
        echo "-- attention.backend=$backend trainer.compile=$compiled"
        timeout 240 python3 -m triforge.launcher.train model=llama_1b precision=bf16 \
            attention.backend="$backend" trainer.compile="$compiled" "${data_arg[@]}" \
            trainer.seq_len=2048 trainer.batch_size=8 trainer.max_steps=20 trainer.log_every=5 \
            trainer.eval_every=0 optim.warmup_steps=5 logging.wandb.enabled=false \
            logging.progress_bar=false trainer.sample_at_end=false checkpoint.every=0 \
            checkpoint.save_at_end=false checkpoint.resume=none \
            run.dir="/tmp/gpu_llama_${backend}_${compiled}" 2>&1 \
            | grep -E "^step|model |error|Error" | tee -a "$out/llama_1b.txt"
    done
fi

[ -n "${SKIP_BENCH:-}" ] && exit 0
echo "== MoE routing kernels vs the torch reference, and moe_small training"
timeout 120 python3 bench/moe_routing.py 2>&1 | tee "$out/moe_routing.txt" | tail -5
echo "== RMSNorm: ours (Triton), torch, apex if installed; forward + backward"
timeout 120 python3 -m bench.rmsnorm 2>&1 | tee "$out/rmsnorm.txt" | tail -12
timeout 150 python3 -m triforge.launcher.train model=moe_small precision=bf16 \
    "${data_arg[@]}" trainer.batch_size=32 trainer.max_steps=30 trainer.log_every=10 \
    trainer.eval_every=0 logging.wandb.enabled=false logging.progress_bar=false \
    trainer.sample_at_end=false checkpoint.every=0 checkpoint.save_at_end=false \
    checkpoint.resume=none run.dir=/tmp/gpu_moe_small 2>&1 | grep -E "^step|model |error" \
    | tee "$out/moe_train.txt"
echo "== attention speed vs SDPA (flash backend)"
timeout 200 python3 bench/attention.py --seqs 2048 8192 --head-dims 64 128 2>&1 \
    | tee "$out/attention.txt" | tail -12
