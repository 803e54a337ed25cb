#!/usr/bin/env bash
# GPU acceptance run of ddetr (docs/gpu_check.md says what each line checks). Needs an NVIDIA GPU; TensorRT
# for the engine lines. Under 10 minutes on one modern GPU. Prints one PASS/FAIL line per check and a
# summary; exit status 1 when a check failed. Logs stay in $WORK (default: a new temporary folder).
#
#   bash bench/gpu_check.sh            # from the repository root
#   WORK=/scratch/gc STEPS_EPOCHS=3 bash bench/gpu_check.sh
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-$(mktemp -d /tmp/ddetr_gpu_check.XXXXXX)}"
EPOCHS="${STEPS_EPOCHS:-4}"   # 600 images at batch 8: 75 steps per epoch, 300 steps by default
mkdir -p "$WORK"
passed=0; failed=0; failures=()

check() {  # check NAME COMMAND...: runs COMMAND with its output in $WORK/NAME.log; last line is the detail
    local name="$1"; shift
    if "$@" >"$WORK/$name.log" 2>&1; then
        passed=$((passed + 1)); echo "PASS $name: $(tail -n 1 "$WORK/$name.log")"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "FAIL $name: $(tail -n 1 "$WORK/$name.log") (log $WORK/$name.log)"
    fi
}

VENV="$WORK/venv"; PY="$VENV/bin/python"; DDETR="$VENV/bin/ddetr"; HELP="$ROOT/bench/_gpu_check.py"
check install bash -c "python3 -m venv '$VENV' && '$PY' -m pip install -q --upgrade pip \
    && '$PY' -m pip install -q -e '$ROOT[test]' transformers onnxruntime-gpu && '$DDETR' --version"
check cuda "$PY" "$HELP" cuda
check data "$PY" "$HELP" data "$WORK/data"

SPEC=(-e "$WORK/data/spec.yaml")
for precision in bf16 fp16; do
    check "train_$precision" bash -c "'$DDETR' train ${SPEC[*]} results_dir='$WORK/$precision' \
        train.precision=$precision train.num_epochs=$EPOCHS && '$PY' '$HELP' loss_falls '$WORK/$precision/train'"
done
check bench_vs_hf "$PY" "$HELP" bench "$WORK/bench"

CKPT="$WORK/bf16/train/dd_model_latest.pth"
check export_onnxruntime "$DDETR" export "${SPEC[@]}" results_dir="$WORK/ort" export.checkpoint="$CKPT" \
    export.on_cpu=true export.onnx_file="$WORK/ort/model.onnx"
check evaluate_onnxruntime bash -c "'$DDETR' evaluate ${SPEC[*]} results_dir='$WORK/ort' \
    evaluate.trt_engine='$WORK/ort/model.onnx' && '$PY' '$HELP' backend '$WORK/ort/evaluate' onnxruntime CUDA"
check export_tensorrt "$DDETR" export "${SPEC[@]}" results_dir="$WORK/trt" export.checkpoint="$CKPT" \
    export.on_cpu=false export.onnx_file="$WORK/trt/model.onnx"
for dtype in FP32 FP16 INT8; do
    tolerance=0.5; [ "$dtype" = INT8 ] && tolerance=1.5
    check "engine_$dtype" bash -c "'$DDETR' gen_trt_engine ${SPEC[*]} results_dir='$WORK/$dtype' \
        gen_trt_engine.onnx_file='$WORK/trt/model.onnx' gen_trt_engine.trt_engine='$WORK/$dtype/model.engine' \
        gen_trt_engine.tensorrt.data_type=$dtype gen_trt_engine.tensorrt.calibration.cal_image_dir=['$WORK/data/images/train'] \
        gen_trt_engine.tensorrt.calibration.cal_batch_size=8 gen_trt_engine.tensorrt.calibration.cal_batches=10 \
        gen_trt_engine.tensorrt.calibration.cal_cache_file='$WORK/$dtype/cal.bin' \
        && '$DDETR' evaluate ${SPEC[*]} results_dir='$WORK/$dtype' evaluate.trt_engine='$WORK/$dtype/model.engine' \
        && '$PY' '$HELP' same_map '$WORK/$dtype/evaluate' '$WORK/ort/evaluate' $tolerance"
done
check evaluate_checkpoint_cuda bash -c "'$DDETR' evaluate ${SPEC[*]} results_dir='$WORK/pth' evaluate.checkpoint='$CKPT' \
    && '$PY' '$HELP' same_map '$WORK/pth/evaluate' '$WORK/ort/evaluate' 0.5"
for backend in modelopt.pytorch onnxruntime; do
    check "quantize_cuda_$backend" bash -c "'$DDETR' quantize ${SPEC[*]} results_dir='$WORK/q_$backend' \
        quantize.model_path='$CKPT' quantize.backend=$backend quantize.mode=static_ptq quantize.device=cuda \
        dataset.quant_calibration_data_sources.image_dir='$WORK/data/images/train' \
        && '$PY' '$HELP' quantized '$WORK/q_$backend/quantize' 1.5"
done

gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [ "${gpus:-0}" -ge 2 ]; then
    check ddp_2_gpus bash -c "'$DDETR' train ${SPEC[*]} results_dir='$WORK/ddp' train.num_gpus=2 train.gpu_ids=[0,1] \
        train.num_epochs=1 && '$PY' '$HELP' ddp '$WORK/ddp/train' '$WORK/bf16/train'"
    check fsdp_2_gpus bash -c "'$DDETR' train ${SPEC[*]} results_dir='$WORK/fsdp' train.num_gpus=2 train.gpu_ids=[0,1] \
        train.distributed_strategy=fsdp train.num_epochs=1 && '$DDETR' evaluate ${SPEC[*]} results_dir='$WORK/fsdp' \
        evaluate.checkpoint='$WORK/fsdp/train/dd_model_latest.pth' && '$PY' '$HELP' evaluated '$WORK/fsdp/evaluate'"
    check engine_gpu_1 bash -c "'$DDETR' gen_trt_engine ${SPEC[*]} results_dir='$WORK/gpu1' gen_trt_engine.gpu_id=1 \
        gen_trt_engine.onnx_file='$WORK/trt/model.onnx' gen_trt_engine.trt_engine='$WORK/gpu1/model.engine' \
        && '$DDETR' evaluate ${SPEC[*]} results_dir='$WORK/gpu1' evaluate.trt_engine='$WORK/gpu1/model.engine' \
        evaluate.gpu_ids=[1] && '$PY' '$HELP' same_map '$WORK/gpu1/evaluate' '$WORK/ort/evaluate' 0.5"
else
    echo "SKIP ddp_2_gpus, fsdp_2_gpus, engine_gpu_1: $gpus GPU(s)"
fi

echo "SUMMARY: $passed passed, $failed failed${failures[*]:+ (${failures[*]})}; logs in $WORK"
[ "$failed" -eq 0 ]
