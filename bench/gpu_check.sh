#!/usr/bin/env bash
# The device check for the speed issue, sized for one lease: core's tests on CUDA, then
# bench/speed.py at 384x512, 1024x1024 and 2048x2048 (memory), each quality option at 512x512,
# then the memory model against
# max_memory_allocated (bench/memory.py, for core/memory.py's CUDA constants). About 9 minutes
# on an H100.
# The GPU image has torch, torchvision, Pillow, numpy and pytest; pydantic travels as wheels:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions
# and the run names .whl in `carry`.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
fi
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1 NST_VGG_WEIGHTS=random
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
# Core on CUDA: the loop, the engine's options, checkpoints (the service's tests need Redis and are not run).
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_losses.py tests/test_vgg.py \
    tests/test_stylize.py tests/test_engine.py tests/test_quality_options.py 2>&1 | tail -15 | tee "$out/tests.txt"
for size in "384 512 200" "1024 1024 50" "2048 2048 10"; do
    set -- $size
    timeout 150 python3 bench/speed.py --device cuda --height "$1" --width "$2" --iterations "$3" 2>&1 \
        | tee "$out/speed_$1x$2.txt"
done
# The quality options (optimizer, style_loss, color_match, average) per iteration at 512x512.
timeout 150 python3 bench/speed.py --device cuda --height 512 --width 512 --iterations 50 --options-only \
    --rounds 3 2>&1 | tee "$out/speed_options.txt"
NST_COMPILE=0 timeout 120 python3 bench/memory.py --device cuda --sizes 256,512,1024,2048 2>&1 | tee "$out/memory.txt"
