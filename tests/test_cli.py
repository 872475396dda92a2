import json

import pytest

from saeuron.cli import main
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES


def test_concepts_json(capsys):
    assert main(["concepts", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kinds"] == {"style": sorted(STYLE_NAMES), "object": sorted(OBJECTS)}
    assert listed["source"] == "minicanvas" and listed["prompts_per_concept"]["style:neon"] == len(OBJECTS)
    assert listed["prompts_per_concept"]["object:star"] == len(STYLE_NAMES) + 1  # and the plain "a star"


def test_generate_then_classify(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a star in neon style\n\na ring in candy style\n")
    out = tmp_path / "images"
    assert main(["generate", "--prompts", str(prompts), "--seeds", "0,1", "--steps", "4", "--out", str(out)]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [(r["prompt"], r["seed"]) for r in index] == [
        ("a star in neon style", 0), ("a star in neon style", 1), ("a ring in candy style", 0), ("a ring in candy style", 1)]
    assert all((out / r["file"]).exists() for r in index)
    capsys.readouterr()
    assert main(["classify", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [r["file"] for r in index]
    assert set(rows[0]) == {"file", "style", "object", "style_prob", "object_prob"}
    assert all(r["style"] in STYLE_NAMES and r["object"] in OBJECTS and 0 < r["style_prob"] <= 1 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "a star in cubism style", "--out", "X"], "unknown word 'cubism'"),
    (["generate", "--prompts", "EMPTY", "--out", "X"], "is empty"),
    (["generate", "--prompt", "a star", "--model", "/no/such/folder", "--out", "X"], "not found"),
    (["generate", "--prompt", "a star", "--seeds", "one", "--out", "X"], "bad seed 'one'"),
    (["classify", "/no/such/folder"], "not found"),
    (["generate", "--prompt", "a star", "--device", "tpu", "--out", "X"], "unknown device 'tpu'"),
    (["generate", "--prompt", "a star", "--device", "cuda:0", "--out", "X"], "CUDA is not available"),
    (["generate", "--prompt", "a star", "--dtype", "float64", "--out", "X"], "unknown dtype 'float64'"),
    (["generate", "--prompts", "NOPROMPT.csv", "--out", "X"], "no 'prompt' column"),
    (["cache", "--prompts", "NOPROMPT.csv", "--hookpoints", "up_blocks.1.attentions.2", "--out", "X"], "no 'prompt' column"),
    (["train", "--cache", "MISSING.h5", "--hookpoint", "h", "--out", "X", "--device", "cuda"], "CUDA is not available"),
    (["score", "--cache", "MISSING.h5", "--sae", "X", "--hookpoint", "h", "--dtype", "half"], "unknown dtype 'half'"),
    (["demo", "--out", "X", "--device", "mps"], "no Apple GPU"),
    (["demo", "--out", "X", "--style", "style:cubism"], "unknown style 'cubism'"),
    (["app", "X", "--device", "cuda:3"], "CUDA is not available"),
    (["concepts", "--store", "MISSING.h5"], "not found"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, argv, message):
    if "CUDA is not available" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    (tmp_path / "EMPTY").write_text("\n")
    (tmp_path / "NOPROMPT.csv").write_text("text,artist\na dog,monet\n")
    argv = [str(tmp_path / a) if a in ("EMPTY", "X", "NOPROMPT.csv", "MISSING.h5") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1  # one line (besides progress bars)
    assert not (tmp_path / "X").exists()  # nothing written


def test_help_lists_every_command_without_importing_the_stages():
    """`saeuron --help` imports no stage (nor torch); each command is registered by the module named for it."""
    import subprocess
    import sys

    from saeuron.cli import COMMANDS, build_parser

    code = ("import sys; from saeuron.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO TORCH")
    assert all(name in out for name in COMMANDS)
    for name in COMMANDS:
        sub = next(a for a in build_parser(name)._actions if a.dest == "command")
        assert name in sub.choices and sub.choices[name].get_default("func") is not None
