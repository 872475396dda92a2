# Run on the lent GPU machine from the repo root, with py3.12 wheels of the dependencies in .whl/ (git-excluded; see
# ../.library/device/README.md); session 12's device runs of scripts/bench_methods.py (benchmarks/RESULTS.md).
# METHODS=unguide,sa (a comma list) runs only those variants; BUDGET (s) and JOBS bound the run.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error || exit 1
R=/tmp/methods
save() { tar czf $OUT/results.tgz -C $R results tuning logs 2>/dev/null; }
(while sleep 10; do save; done) &
nvidia-smi --query-gpu=name,memory.used --format=csv
timeout ${BUDGET:-500} python3 scripts/bench_methods.py --run $R --device cuda --jobs ${JOBS:-12} ${METHODS:+--methods $METHODS} --out $OUT/METHODS.md --png-dir /tmp/pngs 2>&1 | grep -a -v "it/s\]" | grep -a "^\[\|rror\|Traceback\|^|\|FAILED" | tail -90
echo "== main done at $SECONDS s"; nvidia-smi --query-gpu=memory.used --format=csv
save; tar czf $OUT/pngs.tgz -C /tmp pngs 2>/dev/null
tar czf $OUT/unlearned.tgz -C $R --exclude='*.partial' unlearned saes/up_blocks.1.attentions.2/cfg.json 2>/dev/null
tar czf $OUT/saes.tgz -C $R --exclude=checkpoints saes 2>/dev/null; ls -la $OUT; echo done $SECONDS
