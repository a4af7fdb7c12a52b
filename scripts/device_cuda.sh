#!/usr/bin/env bash
# Run on the GPU machine (device tool, carrying .whl): CUDA tests, then bench on random-weight models
# of the exact shapes of SmolLM2-135M Q4_1 and Llama-3.2-1B Q4_0.
#   bash scripts/device_cuda.sh [tests|bench|all|profile|prefill|longctx|overhead|batched|kernels]
set -uo pipefail
what=${1:-all}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
mkdir -p /tmp/lt/llamatorch
for d in cli core convert quantize; do ln -sfn "$PWD/$d" /tmp/lt/llamatorch/$d; done
export PYTHONPATH=/tmp/site:/tmp/lt PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
lt() { python3 -m llamatorch.cli.app "$@"; }
if [ "$what" = tests ] || [ "$what" = all ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_decoders_cuda.py tests/test_triton_kernels.py tests/test_llama_model.py tests/test_formats.py 2>&1 | tail -15
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  python3 scripts/make_shape_model.py --shape smollm2 --type q4_1 --out /tmp/smollm2-q4_1.gguf
  python3 scripts/make_shape_model.py --shape llama1b --type q4_0 --out /tmp/llama1b-q4_0.gguf
  python3 scripts/make_shape_model.py --shape llama1b --type q4_k_m --out /tmp/llama1b-q4_k_m.gguf
  lt bench -m /tmp/smollm2-q4_1.gguf -m /tmp/llama1b-q4_0.gguf -m /tmp/llama1b-q4_k_m.gguf -p 512 -n 128 -r "${REPS:-3}" \
    --device cuda 2>&1
fi
if [ "$what" = kernels ]; then  # tile sweep of the Triton matmul on both shapes
  python3 scripts/bench_quant_matmul.py --shape llama1b --rows 1 --sweep 2>&1 | grep -v failed
  python3 scripts/bench_quant_matmul.py --shape smollm2 --rows 1 --sweep 2>&1 | grep -v failed
  python3 scripts/bench_quant_matmul.py --shape llama8b --rows 1 --sweep 2>&1 | grep -v failed
fi
if [ "$what" = profile ]; then
  [ -f /tmp/smollm2-q4_1.gguf ] || python3 scripts/make_shape_model.py --shape smollm2 --type q4_1 --out /tmp/smollm2-q4_1.gguf
  [ -f /tmp/llama1b-q4_0.gguf ] || python3 scripts/make_shape_model.py --shape llama1b --type q4_0 --out /tmp/llama1b-q4_0.gguf
  python3 scripts/profile_cuda_decode.py /tmp/smollm2-q4_1.gguf
  python3 scripts/profile_cuda_decode.py /tmp/llama1b-q4_0.gguf
fi
if [ "$what" = prefill ]; then  # where a 512-token prefill goes (launch-bound on small models)
  [ -f /tmp/smollm2-q4_1.gguf ] || python3 scripts/make_shape_model.py --shape smollm2 --type q4_1 --out /tmp/smollm2-q4_1.gguf
  python3 scripts/profile_cuda_prefill.py /tmp/smollm2-q4_1.gguf
fi
if [ "$what" = longctx ]; then  # decode deep in a long context: attention split over programs or not
  [ -f /tmp/llama1b-q4_0.gguf ] || python3 scripts/make_shape_model.py --shape llama1b --type q4_0 --out /tmp/llama1b-q4_0.gguf
  for pos in 100 4000 16000; do for flag in "" --no-split; do
    python3 scripts/profile_cuda_decode.py /tmp/llama1b-q4_0.gguf --ctx 16384 --pos $pos $flag 2>&1 | grep -E '^ctx'
  done; done
fi
if [ "$what" = overhead ]; then  # where a decode step's time goes beyond the graph itself
  for m in /tmp/smollm2-q4_1.gguf /tmp/llama1b-q4_0.gguf; do
    [ -f $m ] || bash "$0" bench >/dev/null
    python3 scripts/profile_cuda_decode.py $m 2>&1 | grep -E 'batch |replay\+sync'
  done
fi
if [ "$what" = batched ]; then  # issue 8's batched rows: S_TG at npp 128, ntg 128
  [ -f /tmp/smollm2-q4_1.gguf ] || python3 scripts/make_shape_model.py --shape smollm2 --type q4_1 --out /tmp/smollm2-q4_1.gguf
  python3 scripts/make_shape_model.py --shape llama1b --type q4_k_m --out /tmp/llama1b-q4_k_m.gguf
  lt batched-bench -m /tmp/smollm2-q4_1.gguf -c 32768 -npp 128 -ntg 128 -npl 1,16,64,128 --device cuda 2>&1 | grep "^|"
  lt batched-bench -m /tmp/llama1b-q4_k_m.gguf -c 16384 -npp 128 -ntg 128 -npl 64 --device cuda 2>&1 | grep "^|"
fi
if [ "$what" = parallel ]; then  # tensor parallelism through torchrun (NCCL): tests, then TP=1 vs the plain path on an 8B shape
  python3 -m pytest -q -p no:cacheprovider tests/test_parallel_cuda.py 2>&1 | tail -5
  [ -f /tmp/llama8b-q4_0.gguf ] || python3 scripts/make_shape_model.py --shape llama8b --type q4_0 --out /tmp/llama8b-q4_0.gguf
  n=$(python3 -c "import torch; print(torch.cuda.device_count())")
  tr() { python3 -m torch.distributed.run --standalone --nproc-per-node "$1" -m llamatorch.cli "${@:2}"; }
  lt bench -m /tmp/llama8b-q4_0.gguf -p 512 -n 128 -r 2 --device cuda 2>&1 | grep "^|"
  for tp in $(seq 1 "$n"); do
    [ $tp -eq 1 ] || [ $tp -eq 2 ] || [ $tp -eq 4 ] || [ $tp -eq 8 ] || continue
    echo "TP=$tp (torchrun)"; tr $tp bench -m /tmp/llama8b-q4_0.gguf -p 512 -n 128 -r 2 --device cuda 2>&1 | grep "^|"
    tr $tp batched-bench -m /tmp/llama8b-q4_0.gguf -c 16384 -npp 128 -ntg 128 -npl 64 --device cuda 2>&1 | grep "^|"
    python3 -m torch.distributed.run --standalone --nproc-per-node $tp scripts/bench_tp.py -m /tmp/llama8b-q4_0.gguf --device cuda -B 1,64 2>&1 | grep -E "^#|^B="
  done
  lt batched-bench -m /tmp/llama8b-q4_0.gguf -c 16384 -npp 128 -ntg 128 -npl 64 --device cuda 2>&1 | grep "^|"
fi
