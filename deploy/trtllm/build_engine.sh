#!/usr/bin/env bash
# Build a TensorRT-LLM engine from one registry version's fine-tuned model (paper §4.4.2).
# NOT exercised in CI (no GPU there); run inside NVIDIA's TensorRT-LLM container
# (nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3), written against tensorrt_llm 0.18.
#
#   deploy/trtllm/build_engine.sh VERSION_DIR OUT_DIR [none|int8_sq|fp8] [MAX_BEAM] [MAX_BATCH]
#
# VERSION_DIR: <registry>/versions/<id> (model/ is a Hugging Face checkpoint: safetensors +
# config + tokenizer, the S-ID tokens already in its vocabulary). Quantisation as in §4.4.2:
#   int8_sq  SmoothQuant w8a8 + int8 KV cache ("w8a8c8"); needs calibration prompts:
#            CALIB_DATASET=/path/to/local/dataset (a `text` column of real prompts; nothing
#            is downloaded in production)
#   fp8      FP8 weights/activations + FP8 KV cache (Hopper / Ada, e.g. H20, H100)
set -euo pipefail
VERSION=${1:?version dir}; OUT=${2:?output dir}; QUANT=${3:-none}
MAX_BEAM=${4:-50}; MAX_BATCH=${5:-64}
MAX_INPUT=${MAX_INPUT:-2048}; LEVELS=${LEVELS:-5}
EXAMPLES=${TRTLLM_EXAMPLES:-/app/tensorrt_llm/examples}
MODEL="$VERSION/model"
ARCH=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['model_type'])" "$MODEL/config.json")
case "$ARCH" in
  qwen2|qwen3) FAMILY=qwen ;;
  llama|mistral) FAMILY=llama ;;
  *) echo "error: no TensorRT-LLM recipe here for model_type $ARCH" >&2; exit 1 ;;
esac
CONVERT=$(find "$EXAMPLES" -path "*/$FAMILY/convert_checkpoint.py" | head -n1)
QUANTIZE=$(find "$EXAMPLES" -path "*/quantization/quantize.py" | head -n1)
mkdir -p "$OUT"

case "$QUANT" in
  none)
    python3 "$CONVERT" --model_dir "$MODEL" --output_dir "$OUT/ckpt" --dtype bfloat16 ;;
  int8_sq)
    python3 "$CONVERT" --model_dir "$MODEL" --output_dir "$OUT/ckpt" --dtype float16 \
      --smoothquant 0.5 --per_token --per_channel --int8_kv_cache \
      --calib_dataset "${CALIB_DATASET:?set CALIB_DATASET to a local prompt dataset}" ;;
  fp8)
    python3 "$QUANTIZE" --model_dir "$MODEL" --output_dir "$OUT/ckpt" --dtype bfloat16 \
      --qformat fp8 --kv_cache_dtype fp8 \
      --calib_dataset "${CALIB_DATASET:?set CALIB_DATASET to a local prompt dataset}" ;;
  *) echo "error: quantisation must be none, int8_sq or fp8 (got $QUANT)" >&2; exit 1 ;;
esac

# Beam search needs max_beam_width at build time; the S-ID suffix is LEVELS tokens.
trtllm-build --checkpoint_dir "$OUT/ckpt" --output_dir "$OUT/engine" \
  --max_beam_width "$MAX_BEAM" --max_batch_size "$MAX_BATCH" \
  --max_input_len "$MAX_INPUT" --max_seq_len $((MAX_INPUT + LEVELS)) \
  --gemm_plugin auto --gpt_attention_plugin auto \
  --remove_input_padding enable --paged_kv_cache enable --use_paged_context_fmha enable

cp -r "$(dirname "$0")/model_repository" "$OUT/model_repository"
sed -i "s#__ENGINE_DIR__#$OUT/engine#; s#__VERSION_DIR__#$VERSION#" \
  "$OUT/model_repository/leadre_retrieval/config.pbtxt"
echo "engine: $OUT/engine"
echo "serve:  tritonserver --model-repository $OUT/model_repository"
