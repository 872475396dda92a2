"""Fit one method on one target and measure UA / IRA / CRA on seed 100 (the tuning seed): how the minicanvas
defaults of CA and SPM were chosen (benchmarks/RESULTS.md, issue 19).

    python scripts/probe_methods.py ca style:neon lr=0.0003 iterations=800
"""
import sys, time, torch, shutil
from pathlib import Path
from saeuron.pipelines import load_pipeline, SamplerConfig
from saeuron.concept_set import ConceptSet
from saeuron.unlearn import unlearn, load_unlearned
from saeuron.evaluate import full_answer_set, unlearning_metrics, default_judge
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
method, target = sys.argv[1], sys.argv[2]
sets = sys.argv[3:]
pipe = load_pipeline()
cs = ConceptSet.minicanvas()
out = Path(f"activations/probe_methods/{method}_{target.replace(':','-')}" + "_".join([""] + sets))
shutil.rmtree(out, ignore_errors=True)
t0=time.time()
rec = unlearn(method, [target], out, pipe, "minicanvas", cs, 0, sets)
print("fit", round(time.time()-t0,1), "s", {k: rec[k] for k in ("final_loss","storage_bytes") if k in rec})
u = load_unlearned(out, pipe)
answers = full_answer_set([100])
judge = default_judge()
cfg = SamplerConfig()
t0=time.time()
imgs = u.generate(pipe, answers.prompts(), answers.image_seeds(), cfg)
print("gen", round(time.time()-t0,1))
m = unlearning_metrics(target, answers, judge.label(imgs))
print(method, target, sets, {k: round(v,1) for k,v in m.items()})
