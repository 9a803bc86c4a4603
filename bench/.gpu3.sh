set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
timeout 170 python3 bench/launch_bound.py --repeats 2 --seconds 3 --depths 25 --configs plain,run,run-idle,record > $R/launch.txt 2>&1
echo "launch rc=$?" >> $R/launch.txt
for mode in plain run; do
  if [ $mode = plain ]; then pre=""; else pre="python3 -m vramtop run --"; fi
  timeout 60 $pre python3 -m cProfile -s tottime bench/launch_bound.py --child --depths 25 --seconds 4 > $R/prof-$mode.txt 2>&1
done
tar czf $OUT/r.tgz -C $OUT r
