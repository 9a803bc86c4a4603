set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
date -u > $R/facts.txt
timeout 195 python3 bench/launch_bound.py --repeats 4 --seconds 1.5 --depths 8,25,50 --configs plain,run,record --json-out $R/launch.json > $R/launch.txt 2>&1
echo "launch rc=$?" >> $R/facts.txt
timeout 105 python3 bench/monitor_cpu.py --only cpu --scenarios job --seconds 30 --warmup 8 --job-warmup 20 --json-out $R/monitor.json > $R/monitor.md 2> $R/monitor.err
echo "monitor rc=$?" >> $R/facts.txt
tar czf $OUT/r.tgz -C $OUT r
