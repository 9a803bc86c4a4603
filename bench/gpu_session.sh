#!/bin/bash
# Everything that needs the GPU machine, in one call: the GPU test suite, the benchmarks and a
# real recording for screenshots. Writes into $OUT (default ./gpu-out). Usage, from the repo root:
#   bash bench/gpu_session.sh [stress] [costs] [overhead] [tests] [record] [monitor]   (default: all)
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
else
    export PYTHONPATH=$PWD:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
# Bytecode as an installation has it: the GPU machine sets PYTHONDONTWRITEBYTECODE, and without
# this every start-up figure would include compiling Textual and vramtop from source.
python3 -m compileall -q vramtop /tmp/site >/dev/null 2>&1
# The same for what both monitors import from the machine's own site-packages: on the GPU machine
# pynvml (a 5,000-line module), psutil and typing_extensions had no bytecode, and compiling
# pynvml alone held vramtop's first frame back by ~0.1 s.
python3 -m compileall -q $(python3 -c 'import os, pynvml, psutil, typing_extensions as t
print(pynvml.__file__, t.__file__, os.path.dirname(psutil.__file__))') >/dev/null 2>&1
steps=${*:-stress costs overhead tests record monitor}
summary=$OUT/summary.md
{
    echo "# GPU session $(date -u '+%Y-%m-%d %H:%M UTC')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,persistence_mode --format=csv,noheader
    python3 -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)'
} > "$summary"
section() { echo; echo "## $1 ($(date -u +%H:%M:%S))"; }
for step in $steps; do
    case $step in
    stress)  # the agent must never crash its host process: run before anything is timed
        section "agent stress (exit 0 = survived)" >> "$summary"
        for variant in "--cycles 80" "--steady 60"; do
            timeout 300 python3 -X faulthandler bench/agent_stress.py $variant > "$OUT/stress.log" 2>&1
            echo "agent_stress.py $variant: exit $?" >> "$summary"
            grep -v Warning "$OUT/stress.log" | tail -n 30 >> "$summary"
        done ;;
    costs)
        { section "NVML call costs"; python3 bench/nvml_costs.py "$OUT/nvml_costs.json"; } >> "$summary" 2>&1
        { section "agent operation costs"; python3 bench/agent_costs.py --json-out "$OUT/agent_costs.json"; } \
            >> "$summary" 2>&1 ;;
    overhead)
        { section "agent overhead"; python3 bench/agent_overhead.py --rounds 25 --json-out "$OUT/agent_overhead.json"; } >> "$summary" 2>&1 ;;
    tests)
        section "GPU tests" >> "$summary"
        python3 -m pytest -m gpu tests/gpu -v -s -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
        tail -n 25 "$OUT/gpu_tests.log" >> "$summary" ;;
    record)
        section "recording a training run" >> "$summary"
        # From a directory of its own, so the recording names no path of this checkout.
        run=$(mktemp -d) && cp bench/train_demo.py bench/workloads.py "$run"
        (cd "$run" && python3 -m vramtop record -o "$OUT/train.jsonl" -i 0.5 -- \
            python3 train_demo.py --steps "${DEMO_STEPS:-300}" --leak-mib 32 --oom) >> "$summary" 2>&1
        echo "exit $?" >> "$summary" ;;
    monitor)
        { section "monitor CPU, vramtop vs nvitop"; python3 bench/monitor_cpu.py --json-out "$OUT/monitor_cpu.json"; } >> "$summary" 2>&1 ;;
    esac
done
echo "done $(date -u +%H:%M:%S)" >> "$summary"
