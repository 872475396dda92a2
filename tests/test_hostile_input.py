"""Hostile input through every command: each case exits 2 with one error line, no traceback, writes nothing and
changes no existing file. Table-driven: a case is (argv with placeholders, a phrase the message must hold)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from saeuron.cli import main
from conftest import TINY_HOOKPOINT

BIG = "123456789012345678901"  # a 21-digit integer
P = ["--prompt", "a star in neon style"]

CASES: list[tuple[list[str], str]] = []


def case(message: str, *argv: str) -> None:
    CASES.append((list(argv), message))


# ---- numbers: not numbers, not finite, out of range (checked by the parser, before anything runs)
for cmd in (["generate", *P, "--out", "OUT"],
            ["cache", "--minicanvas", "--hookpoints", TINY_HOOKPOINT, "--out", "OUT/c.h5"],
            ["evaluate", "--sae", "SAE", "--targets", "style:neon", "--out", "OUT/r.json"]):
    for flag, value, message in (("--steps", "0", "out of range"), ("--steps", "abc", "not an integer"), ("--steps", "5000", "out of range"),
                                 ("--cfg", "nan", "not a finite number"), ("--cfg", "inf", "not a finite number"), ("--cfg", "-1", "out of range"),
                                 ("--cfg", "x", "not a number"), ("--batch-size", "0", "out of range"), ("--batch-size", "-3", "out of range"),
                                 ("--batch-size", BIG, "out of range"), ("--device", "tpu", "unknown device 'tpu'"),
                                 ("--dtype", "float64", "unknown dtype 'float64'"), ("--seeds", BIG, "out of range"),
                                 ("--seeds", "one", "bad seed 'one'"), ("--seeds", ",", "no seeds")):
        case(message, *cmd, flag, value)
for cmd in (["generate", *P, "--sae", "SAE", "--ablate", "style:neon", "--out", "OUT"],
            ["evaluate", "--sae", "SAE", "--targets", "style:neon", "--out", "OUT/r.json"]):
    for flag, value, message in (("--multiplier", "nan", "not a finite number"), ("--multiplier", "1", "out of range"),
                                 ("--multiplier", "0", "out of range"), ("--percentile", "100", "out of range"),
                                 ("--percentile", "0", "out of range"), ("--percentile", "inf", "not a finite number"),
                                 ("--dominance", "-1", "out of range"), ("--dominance", "nan", "not a finite number"),
                                 ("--start", "1", "out of range"), ("--start", "-0.1", "out of range"),
                                 ("--selection", "nearest", "invalid choice"), ("--firing", "max", "invalid choice")):
        case(message, *cmd, flag, value)
for flag, value, message in (("--k", "0", "out of range"), ("--expansion", "0", "out of range"), ("--lr", "0", "out of range"),
                             ("--lr", "nan", "not a finite number"), ("--batch-size", "0", "out of range"), ("--tokens", "-5", "out of range"),
                             ("--val-fraction", "1", "out of range"), ("--val-fraction", "0", "out of range"), ("--seed", BIG, "out of range"),
                             ("--seed", "-1", "out of range"), ("--aux-loss-coefficient", "inf", "not a finite number"),
                             ("--checkpoints", "-1", "out of range"), ("--arch", "relu", "invalid choice"), ("--device", "cuda:99", "CUDA"),
                             ("--dtype", "half", "unknown dtype")):
    case(message, "train", "--cache", "STORE", "--hookpoint", TINY_HOOKPOINT, "--out", "OUT/sae", flag, value)
for flag, value, message in (("--position-seed", "-1", "out of range"), ("--commit-mb", "nan", "not a finite number"),
                             ("--branch", "both-ish", "invalid choice"), ("--timesteps", "every:0", "bad --timesteps"),
                             ("--positions", "random:0", "bad --positions"), ("--timesteps", "99", "bad --timesteps")):
    case(message, "cache", "--minicanvas", "--hookpoints", TINY_HOOKPOINT, "--out", "OUT/c.h5", "--steps", "3", flag, value)
for flag, value, message in (("--port", "0", "out of range"), ("--port", "70000", "out of range"), ("--port", "http", "not an integer"),
                             ("--device", "gpu", "unknown device"), ("--dtype", "int8", "unknown dtype")):
    case(message, "app", "RUN", flag, value)
for flag, value, message in (("--cache-seeds", "x", "bad seed"), ("--eval-seeds", BIG, "out of range"), ("--style", "style:cubism", "unknown style"),
                             ("--object", "object:blob", "unknown object"), ("--style", "object:star", "erases a style"),
                             ("--device", "cuda:7", "CUDA"), ("--dtype", "fp8", "unknown dtype")):
    case(message, "demo", "--out", "OUT/demo", flag, value)

# ---- files that are not what they claim
case("not UTF-8", "generate", "--prompts", "BYTES.txt", "--out", "OUT")
case("no 'prompt' column", "generate", "--prompts", "NOPROMPT.csv", "--out", "OUT")
case("is not JSON", "cache", "--prompts", "BAD.jsonl", "--hookpoints", TINY_HOOKPOINT, "--out", "OUT/c.h5")
case("is a folder", "generate", "--prompts", "DIR", "--out", "OUT")
case("not found", "generate", "--prompts", "MISSING.csv", "--out", "OUT")
case("is empty", "generate", "--prompts", "EMPTY.txt", "--out", "OUT")
case("contains ',' or ':'", "concepts", "--prompts", "COLON.csv")
case("bad concept kind", "concepts", "--prompts", "BADKIND.csv")
case("not a readable image", "classify", "FAKEPNG")
case("is a file", "classify", "NOPROMPT.csv")
case("not found", "classify", "MISSING_DIR")
case("could not load model folder", "generate", *P, "--model", "FOREIGN_MODEL", "--out", "OUT")
case("not readable JSON", "generate", *P, "--model", "BADINDEX_MODEL", "--out", "OUT")
case("not found or has no model_index.json", "hookpoints", "--model", "DIR")
case("cannot load the sae-lens SAE", "score", "--cache", "STORE", "--sae", "TRUNCATED_SAE")
case("cannot load the sae-lens SAE", "generate", *P, "--sae", "WIDE_SAE", "--ablate", "style:neon", "--out", "OUT")
case("not readable JSON", "generate", *P, "--sae", "BADTUNED_SAE", "--ablate", "style:neon", "--out", "OUT")
case("not a readable HDF5 file", "train", "--cache", "GARBAGE.h5", "--hookpoint", TINY_HOOKPOINT, "--out", "OUT/sae")
case("not a saeuron activation store", "concepts", "--store", "FOREIGN.h5")
case("not a readable HDF5 file", "score", "--cache", "GARBAGE.h5", "--sae", "SAE")
case("not found", "concepts", "--store", "MISSING.h5")
case("SAE folder", "score", "--cache", "STORE", "--sae", "MISSING_DIR")
case("not a saeuron concept-score file", "evaluate", "--sae", "FOREIGNSCORES_SAE", "--targets", "style:neon", "--out", "OUT/r.json")
case("not found", "evaluate", "--sae", "MISSING_DIR", "--targets", "style:neon", "--out", "OUT/r.json")

# ---- names: unknown targets, concepts, kinds, hookpoints
case("unknown concept kind 'artist'", "generate", *P, "--sae", "SAE", "--ablate", "artist:monet", "--out", "OUT")
case("unknown concept 'style:cubism'", "generate", *P, "--sae", "SAE", "--ablate", "style:cubism", "--out", "OUT")
case("KIND:VALUE", "generate", *P, "--sae", "SAE", "--ablate", "neon", "--out", "OUT")
case("--ablate needs --sae", "generate", *P, "--ablate", "style:neon", "--out", "OUT")
case("bad target 'style:cubism'", "evaluate", "--sae", "SAE", "--targets", "style:cubism", "--out", "OUT/r.json")
case("no concept kind 'artist'", "evaluate", "--sae", "SAE", "--targets", "all-artists", "--out", "OUT/r.json")
case("unknown judge 'dino'", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--judge", "dino", "--out", "OUT/r.json")
case("cannot load the CLIP judge", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--judge", "clip:/no/clip", "--out", "OUT/r.json")
case("for a CLIP judge", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--judge-template", "style=a {value}", "--out", "OUT/r.json")
case("bad judge template", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--judge-template", "style", "--out", "OUT/r.json")
case("disjoint", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--seeds", "5", "--tune-seeds", "5", "--out", "OUT/r.json")
# ---- evaluation seeds that the concept scores (or a reused store) already saw: refused, not warned
case("evaluation seeds [1] were also used to compute the concept scores", "evaluate", "--sae", "SAE", "--targets", "style:neon",
     "--seeds", "1-2", "--percentile", "99", "--multiplier", "-5", "--dominance", "0", "--out", "OUT/r.json")
case("the existing store", "demo", "--out", "REUSED_RUN", "--cache-seeds", "5", "--eval-seeds", "1")  # the store's seeds, not the flags
case("has no activations of down_blocks.1", "demo", "--out", "REUSED_RUN", "--eval-seeds", "300")  # an older demo's store
case("evaluation seeds [0] overlap", "demo", "--out", "OUT/demo", "--cache-seeds", "0", "--eval-seeds", "0,200")
case("bad tuning multiplier list", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--tune-multipliers", "5", "--out", "OUT/r.json")
case("bad tuning start list", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--tune-starts", "0,1.5", "--out", "OUT/r.json")
case("unknown hookpoint 'up_blocks.9'", "cache", "--minicanvas", "--hookpoints", "up_blocks.9", "--out", "OUT/c.h5")
case("not in", "train", "--cache", "STORE", "--hookpoint", "mid_block.attentions.0", "--out", "OUT/sae")
case("unknown word 'cubism'", "generate", "--prompt", "a star in cubism style", "--out", "OUT")
case("unknown word", "cache", "--prompts", "GOOD.csv", "--hookpoints", TINY_HOOKPOINT, "--out", "OUT/c.h5")

# ---- outputs that cannot be written or would clobber something
case("is a file, not a folder", "generate", *P, "--out", "NOPROMPT.csv/x")
case("is a file; give a folder", "generate", *P, "--out", "NOPROMPT.csv")
case("already holds generated images", "generate", *P, "--out", "DONE_IMAGES")
case("is a folder; give a file path", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--out", "DIR")
case("already exists and is not a saeuron output", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--out", "NOPROMPT.csv")
case("is a file; give a folder", "evaluate", "--sae", "SAE", "--targets", "style:neon", "--out", "OUT/r.json", "--report", "NOPROMPT.csv")
case("already exists and is not a saeuron output", "score", "--cache", "STORE", "--sae", "SAE", "--out", "NOPROMPT.csv")
case("is a folder; give a file path", "score", "--cache", "STORE", "--sae", "SAE", "--out", "DIR")
case("already exists; pass --resume", "cache", "--minicanvas", "--hookpoints", TINY_HOOKPOINT, "--out", "NOPROMPT.csv")
case("is a file; give a folder", "train", "--cache", "STORE", "--hookpoint", TINY_HOOKPOINT, "--out", "NOPROMPT.csv")
case("already holds an SAE run", "train", "--cache", "STORE", "--hookpoint", TINY_HOOKPOINT, "--out", "SAE")
case("is a file; give a folder", "demo", "--out", "NOPROMPT.csv")

# ---- unlearning: unknown methods, unknown targets, folders that are missing, foreign or for another base model
case("unknown method 'fmn'", "unlearn", "--method", "fmn", "--targets", "style:neon", "--out", "OUT/u")
case("bad target 'style:cubism'", "unlearn", "--method", "uce", "--targets", "style:cubism", "--out", "OUT/u")
case("bad --set 'lr=fast'", "unlearn", "--method", "esd-x", "--targets", "style:neon", "--set", "lr=fast", "--out", "OUT/u")
case("bad --set 'speed=2'", "unlearn", "--method", "esd-x", "--targets", "style:neon", "--set", "speed=2", "--out", "OUT/u")
case("must be >= 1", "unlearn", "--method", "ca", "--targets", "style:neon", "--set", "iterations=0", "--out", "OUT/u")
case("surrogate is one of next, noise", "unlearn", "--method", "sa", "--targets", "style:neon", "--set", "surrogate=photo", "--out", "OUT/u")
case("needs --sae", "unlearn", "--method", "saeuron", "--targets", "style:neon", "--out", "OUT/u")
case("already holds an unlearned model", "unlearn", "--method", "uce", "--targets", "style:neon", "--out", "UNLEARNED")
case("give --prompts", "unlearn", "--method", "uce", "--model", "FOREIGN_MODEL", "--targets", "style:neon", "--out", "OUT/u")
case("not found", "generate", *P, "--unlearned", "MISSING_DIR", "--out", "OUT")
case("not an unlearned-model folder", "generate", *P, "--unlearned", "DIR", "--out", "OUT")
case("not a saeuron unlearn record", "generate", *P, "--unlearned", "FOREIGN_UNLEARNED", "--out", "OUT")
case("lacks its weights file", "evaluate", "--unlearned", "NOWEIGHTS_UNLEARNED", "--out", "OUT/r.json")
case("was made for the base model", "generate", "--prompt", "a dog", "--model", "SD_MODEL", "--unlearned", "UNLEARNED", "--out", "OUT")
case("not both", "generate", *P, "--unlearned", "UNLEARNED", "--sae", "SAE", "--out", "OUT")
case("bad target 'style:lava'", "evaluate", "--unlearned", "UNLEARNED", "--targets", "style:lava", "--out", "OUT/r.json")
case("is SAeUron's", "evaluate", "--unlearned", "UNLEARNED", "--multiplier", "-5", "--out", "OUT/r.json")
case("give --sae DIR", "evaluate", "--targets", "style:neon", "--out", "OUT/r.json")
for flag, value, message in (("--lr", "nan", "not a finite number"), ("--lr", "0", "out of range"), ("--epochs", "0", "out of range"),
                             ("--weight", "-1", "out of range"), ("--batch-size", "0", "out of range"), ("--seed", "-1", "out of range")):
    case(message, "supervise", "--sae", "SAE", "--cache", "STORE", "--out", "OUT/s", flag, value)
case("MISSING.h5", "supervise", "--sae", "SAE", "--cache", "MISSING.h5", "--out", "OUT/s")
case("cannot load the sae-lens SAE", "supervise", "--sae", "TRUNCATED_SAE", "--cache", "STORE", "--out", "OUT/s")
case("not a readable HDF5 file", "supervise", "--sae", "SAE", "--cache", "GARBAGE.h5", "--out", "OUT/s")
case("not a saeuron concept-score file", "supervise", "--sae", "FOREIGNSCORES_SAE", "--cache", "STORE", "--out", "OUT/s")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_run):
    """Every file the cases name, built once; the test checks none of it changes."""
    import h5py

    from tiny_models import tiny_sd_pipeline

    w = tmp_path_factory.mktemp("hostile")
    sae = tiny_run / "saes" / TINY_HOOKPOINT
    (w / "BYTES.txt").write_bytes(bytes(range(256)) * 4)
    (w / "NOPROMPT.csv").write_text("text,artist\na dog,monet\n")
    (w / "BAD.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    (w / "EMPTY.txt").write_text("\n\n")
    (w / "COLON.csv").write_text("prompt,artist\na dog,x:y\n")
    (w / "BADKIND.csv").write_text("prompt,bad kind\na dog,x\n")
    (w / "GOOD.csv").write_text("prompt,animal\na dog,dog\n")
    (w / "DIR").mkdir()
    (w / "FAKEPNG").mkdir()
    (w / "FAKEPNG" / "a.png").write_text("not an image")
    model = tiny_sd_pipeline(w / "FOREIGN_MODEL")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    (w / "BADINDEX_MODEL").mkdir()
    (w / "BADINDEX_MODEL" / "model_index.json").write_text("{not json")
    for name in ("SAE", "TRUNCATED_SAE", "WIDE_SAE", "BADTUNED_SAE", "FOREIGNSCORES_SAE"):
        shutil.copytree(sae, w / name)
    weights = w / "TRUNCATED_SAE" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    cfg = json.loads((w / "WIDE_SAE" / "cfg.json").read_text())
    (w / "WIDE_SAE" / "cfg.json").write_text(json.dumps({**cfg, "d_in": cfg["d_in"] * 2}))
    (w / "BADTUNED_SAE" / "tuned.json").write_text("{broken")
    with h5py.File(w / "FOREIGNSCORES_SAE" / "concepts.h5", "w") as f:
        f.attrs["format"] = "something-else"
    shutil.copy(tiny_run / "cache.h5", w / "STORE")
    (w / "GARBAGE.h5").write_bytes(b"\x89HDF garbage" * 100)
    with h5py.File(w / "FOREIGN.h5", "w") as f:
        f["x"] = [1, 2, 3]
    (w / "DONE_IMAGES").mkdir()
    (w / "DONE_IMAGES" / "index.json").write_text("[]")
    (w / "RUN").mkdir()
    from saeuron.concept_set import ConceptSet
    from saeuron.pipelines import load_pipeline
    from saeuron.unlearn import unlearn

    unlearn("uce", ["style:neon"], w / "UNLEARNED", load_pipeline(), "minicanvas", ConceptSet.minicanvas(), log=lambda s: None)
    (w / "FOREIGN_UNLEARNED").mkdir()
    (w / "FOREIGN_UNLEARNED" / "unlearn.json").write_text(json.dumps({"method": "magic", "targets": ["style:neon"]}))
    shutil.copytree(w / "UNLEARNED", w / "NOWEIGHTS_UNLEARNED")
    (w / "NOWEIGHTS_UNLEARNED" / "edited_unet.safetensors").unlink()
    tiny_sd_pipeline(w / "SD_MODEL")
    (w / "REUSED_RUN").mkdir()  # a demo run folder whose store holds seeds 0 and 1
    shutil.copy(tiny_run / "cache.h5", w / "REUSED_RUN" / "cache.h5")
    return w


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def test_there_are_more_than_a_hundred_cases():
    assert len(CASES) >= 100


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:90] for a, _ in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(workspace, capsys, argv, message):
    names = {p.name for p in workspace.iterdir()} | {"OUT", "MISSING.csv", "MISSING.h5", "MISSING_DIR"}
    argv = [str(workspace / a.split("/", 1)[0]) + ("/" + a.split("/", 1)[1] if "/" in a else "")
            if a.split("/", 1)[0] in names else a for a in argv]
    before = _snapshot(workspace)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert message in errors[0], errors[0]
    assert _snapshot(workspace) == before  # nothing written, nothing changed
