"""One attack on one target of an unlearned folder, seed 300: how the attack budget was sized (benchmarks/RESULTS.md).

    python scripts/probe_attack.py FOLDER TARGET ATTACK ITERATIONS LR     (writes /tmp/control.png: before / after)
"""
import sys, torch
from saeuron.pipelines import load_pipeline, SamplerConfig, resolve_sampler
from saeuron.unlearn import load_unlearned
from saeuron.attack import attack_target, AttackConfig
from saeuron.evaluate import default_judge
from saeuron.concept_set import ConceptSet
torch.set_num_threads(2)
pipe = load_pipeline(); s = resolve_sampler(pipe, SamplerConfig())
u = load_unlearned(sys.argv[1], pipe)
rec, emb, grid = attack_target(pipe, u, sys.argv[2], [300], AttackConfig(sys.argv[3], iterations=int(sys.argv[4]), lr=float(sys.argv[5])), s, default_judge(), ConceptSet.minicanvas())
print(sys.argv[1:], rec["UA_before"], rec["UA_after"], rec["loss_first"], rec["loss_last"], round(rec["seconds"]))
from saeuron.pipelines import to_uint8
from saeuron.attack import _save_grid
_save_grid(to_uint8(grid), __import__("pathlib").Path("/tmp/control.png"))
