# Run on the lent GPU machine from the repo root, with py3.12 wheels of the dependencies in .whl/ (git-excluded; see
# ../.library/device/README.md); session 12's device runs of scripts/bench_methods.py (benchmarks/RESULTS.md).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error || exit 1
D=/tmp/dev; F=/tmp/final; OBJ=object:star,object:ring,object:heart
save() { tar czf $OUT/results.tgz -C /tmp dev/results dev/tuning final/results final/tuning 2>/dev/null; }
(while sleep 10; do save; done) &
echo "== dev seeds 200-204 at $SECONDS s"
timeout ${B1:-150} python3 scripts/bench_methods.py --run $D --device cuda --jobs 6 --methods saeuron-paper,saeuron-paper-t5 --targets $OBJ --eval-seeds 200-204 --out $OUT/DEV.md --png-dir /tmp/devpng 2>&1 | grep -a "^\[\|rror\|Traceback\|FAILED" | grep -v "^\[./4\]"
CHOSEN=$(python3 - <<'PY'
import json, pathlib
score = {}
for v in ("saeuron-paper", "saeuron-paper-t5"):
    rows = [json.loads(f.read_text()) for f in pathlib.Path("/tmp/dev/results", v).glob("object-*.json")]
    score[v] = sum((r["UA"] + r["IRA"]) / 2 for r in rows) / len(rows) if len(rows) == 3 else -1
print(max(score, key=lambda v: (score[v], v == "saeuron-paper")))  # ties: the paper-faithful tuning
import sys; print(score, file=sys.stderr)
PY
)
echo "== chosen on 200-204: $CHOSEN at $SECONDS s"
mkdir -p $F; ln -s $D/cache.h5 $F/cache.h5; cp -r $D/saes $D/tuning $D/demo_config.json $F/
timeout ${B2:-90} python3 scripts/bench_methods.py --run $F --device cuda --jobs 6 --methods saeuron-paper,$CHOSEN --targets $OBJ --eval-seeds 300-304 --out $OUT/FINAL.md --png-dir /tmp/finalpng 2>&1 | grep -a "^\[\|rror\|Traceback\|FAILED" | grep -v "^\[./4\]"
save; echo "== done $SECONDS s"
