set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -c 'import torch,sys;print(sys.version.split()[0], torch.__version__)'; nproc; } > $R/facts.txt
timeout 120 python3 -m pytest -m gpu tests/gpu/test_namespace_gpu.py -v -s -p no:cacheprovider > $R/ns.log 2>&1
echo "ns rc=$?" >> $R/facts.txt
timeout 250 python3 bench/launch_bound.py --repeats 2 --seconds 3 --depths 8,25,50 --json-out $R/launch.json > $R/launch.txt 2>&1
echo "launch rc=$?" >> $R/facts.txt
timeout 200 python3 bench/monitor_cpu.py --only cpu --seconds 40 --warmup 10 --job-warmup 25 --json-out $R/monitor.json > $R/monitor.md 2> $R/monitor.err
echo "monitor rc=$?" >> $R/facts.txt
tar czf $OUT/r.tgz -C $OUT r
