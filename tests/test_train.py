"""SAE training (sae-lens SAETrainer) on synthetic data and a tiny HDF5 store, and the SAE loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saeuron import cache
from saeuron.cache import writer
from saeuron.cli import main
from saeuron.errors import UserError
from saeuron.sae import load_sae
from saeuron.train import (
    TrainConfig,
    default_k,
    evaluate_sae,
    tensor_batches,
    train,
    validation_prompt_mask,
)

D_IN = 32
HOOK = "up_blocks.1.attentions.1"


def synthetic(n: int, seed: int, d: int = D_IN, m: int = 64, active: int = 3) -> torch.Tensor:
    """Rows that are sparse positive combinations of m fixed random unit directions (+ an offset)."""
    dirs = torch.randn(m, d, generator=torch.Generator().manual_seed(0))
    dirs /= dirs.norm(dim=1, keepdim=True)
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    z = torch.zeros(n, m).scatter(1, idx, torch.rand(n, active, generator=g) * 2 + 1)
    return z @ dirs + 0.5 + 0.01 * torch.randn(n, d, generator=g)


@pytest.fixture(scope="module")
def data():
    return synthetic(20000, seed=1), synthetic(2000, seed=2)


def small_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), hookpoint=HOOK, arch="topk", k=4, expansion=4, batch_size=256, tokens=256 * 200, lr=4e-3)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    x, val = data
    out = tmp_path_factory.mktemp("sae") / "topk"
    metrics = train(small_cfg(out), data=tensor_batches(x, 256), val_acts=val)
    return out, metrics


def test_default_k_scales_with_width():
    assert default_k(1280) == 32
    assert default_k(64) == 4  # at least 4
    assert default_k(16) == 2  # at most width/8
    assert default_k(5120) == 128


def test_validation_split_is_by_prompt():
    ids = np.repeat(np.arange(50), 7)  # 7 rows per prompt
    mask = validation_prompt_mask(ids, 0.1)
    per_prompt = {p: set(mask[ids == p]) for p in range(50)}
    assert all(len(v) == 1 for v in per_prompt.values())  # every prompt entirely on one side
    assert 2 <= sum(v == {True} for v in per_prompt.values()) <= 10
    np.testing.assert_array_equal(mask, validation_prompt_mask(ids, 0.1))  # deterministic
    two = validation_prompt_mask(np.array([3, 3, 8]), 0.1)
    assert two.any() and not two.all()  # at least one prompt each side


def test_synthetic_training_reaches_low_fvu(trained):
    out, metrics = trained
    assert metrics["val_fvu"] < 0.2
    assert metrics["val_explained_variance"] == pytest.approx(1 - metrics["val_fvu"])
    assert metrics["val_l0"] == pytest.approx(4.0)
    for key in ("val_dead_fraction", "train_dead_fraction", "tokens_seen", "wall_time_s", "train_l0"):
        assert key in metrics
    assert metrics["tokens_seen"] == 256 * 200
    assert json.loads((out / "metrics.json").read_text()) == metrics
    cfg = TrainConfig.from_json((out / "train_config.json").read_text())
    assert (cfg.d_in, cfg.k, cfg.arch, cfg.expansion) == (D_IN, 4, "topk", 4)
    assert not (out / "checkpoints").exists()  # removed once the run is complete


def test_output_is_sae_lens_format(trained, data):
    from sae_lens import SAE

    out, metrics = trained
    sae = SAE.load_from_disk(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, 4 * D_IN)
    assert sae.cfg.metadata.hook_name == HOOK
    assert evaluate_sae(sae, data[1])["val_fvu"] == pytest.approx(metrics["val_fvu"], rel=1e-4)


def test_load_sae_on_sae_lens_output(trained, data):
    from sae_lens import SAE

    out, _ = trained
    ref = SAE.load_from_disk(out)
    sae = load_sae(out, expected_width=D_IN, hookpoint=HOOK)
    x = data[1][:64]
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ref.encode(x))
        torch.testing.assert_close(sae.decode(sae.encode(x)), ref.decode(ref.encode(x)))


def test_load_sae_width_mismatch(trained):
    out, _ = trained
    with pytest.raises(UserError) as err:
        load_sae(out, expected_width=1280, hookpoint=HOOK)
    msg = str(err.value)
    assert "32" in msg and "1280" in msg and HOOK in msg


def test_load_sae_missing_or_unknown_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an SAE folder"):
        load_sae(tmp_path / "empty")


def write_sparsify(folder: Path, d_in: int = 16, d_sae: int = 64, k: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {
        "encoder.weight": torch.randn(d_sae, d_in, generator=g),
        "encoder.bias": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    folder.mkdir(parents=True)
    save_file(w, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": 0, "k": k, "multi_topk": False, "d_in": d_in}))
    return w


def sparsify_reference(w: dict[str, torch.Tensor], k: int, x: torch.Tensor):
    """EleutherAI sparsify's forward, written out: topk(relu(encoder(x - b_dec))), top_acts @ W_dec[idx] + b_dec."""
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    return z, z @ w["W_dec"] + w["b_dec"]


def test_load_sae_sparsify_checkpoint_matches_original(tmp_path):
    w = write_sparsify(tmp_path / "run" / f"unet.{HOOK}", k=5)
    write_sparsify(tmp_path / "run" / "unet.up_blocks.1.attentions.2", k=5, seed=1)
    sae = load_sae(tmp_path / "run", expected_width=16, hookpoint=HOOK)  # picks the hookpoint's subfolder
    x = torch.randn(32, 16)
    z_ref, x_hat_ref = sparsify_reference(w, 5, x)
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(z, z_ref)
        torch.testing.assert_close(sae.decode(z), x_hat_ref)
    with pytest.raises(UserError, match="no SAE for hookpoint"):
        load_sae(tmp_path / "run", hookpoint="down_blocks.0")
    with pytest.raises(UserError, match="width 16.*width 1280"):
        load_sae(tmp_path / "run" / f"unet.{HOOK}", expected_width=1280)


class Interrupting:
    """A data provider that raises KeyboardInterrupt (like Ctrl-C) after n batches."""

    def __init__(self, inner, n: int):
        self.inner, self.n = inner, n

    def __iter__(self):
        return self

    def __next__(self):
        self.n -= 1
        if self.n < 0:
            raise KeyboardInterrupt
        return next(self.inner)


def test_same_seed_same_data_gives_the_same_sae(tmp_path, data):
    from safetensors.torch import load_file

    x, val = data
    weights = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.randn(7)  # whatever the global generator did before, the seed decides the initial weights
        train(small_cfg(tmp_path / run, tokens=256 * 20, seed=seed), data=tensor_batches(x, 256), val_acts=val)
        weights.append(load_file(tmp_path / run / "sae_weights.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["W_enc"], weights[2]["W_enc"])


def test_resume_continues_an_interrupted_run_exactly(tmp_path, data):
    """Interrupted at a step and resumed, training gives bit-identical weights to an uninterrupted run with the same seed."""
    from safetensors.torch import load_file

    x, val = data
    cfg = small_cfg(tmp_path / "run", tokens=256 * 120, n_checkpoints=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data=Interrupting(tensor_batches(x, 256), 4 + 80), val_acts=val)  # 4 batches set b_dec
    ckpts = list((tmp_path / "run" / "checkpoints").iterdir())
    assert [int(p.name) for p in ckpts] == [256 * 80]  # only the newest checkpoint is kept
    with pytest.raises(UserError, match="--resume"):
        train(cfg, data=tensor_batches(x, 256), val_acts=val)
    counted = Interrupting(tensor_batches(x, 256), 10**6)  # the same stream from its start: resume replays it to the checkpoint
    metrics = train(cfg, resume=True, data=counted, val_acts=val)
    assert 10**6 - counted.n == 4 + 120  # the 84 batches the checkpoint had drawn were skipped, then the 40 remaining steps ran
    assert metrics["tokens_seen"] == 256 * 120 and metrics["steps"] == 120
    assert train(cfg, resume=True, data=counted, val_acts=val) == metrics  # already complete
    whole = small_cfg(tmp_path / "whole", tokens=256 * 120, n_checkpoints=4)
    reference = train(whole, data=tensor_batches(x, 256), val_acts=val)
    a, b = load_file(tmp_path / "run" / "sae_weights.safetensors"), load_file(tmp_path / "whole" / "sae_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["val_fvu"] == reference["val_fvu"] and metrics["steps"] == reference["steps"]


def write_store(path: Path, n_prompts: int = 12, rows_per_prompt: int = 400, capture: str = "output", model: str = "minicanvas") -> None:
    """A tiny `saeuron cache` store, one unit per prompt, rows at timesteps 999, 500 and 1; column 0 holds the prompt index."""
    x = synthetic(n_prompts * rows_per_prompt, seed=3)
    prompt = np.repeat(np.arange(n_prompts), rows_per_prompt)
    step = np.tile(np.repeat([0, 1, 2], [134, 133, 133]), n_prompts)
    x[:, 0] = torch.from_numpy(prompt).float()  # lets the test see which prompt a row came from
    config = cache.CacheConfig(hookpoints=(HOOK,), prompts="test", seeds=(0,), steps=3, batch_size=1, capture=capture, model=model)
    writer.Writer.create(path, config.to_json(), cache.prompt_table([f"prompt {i}" for i in range(n_prompts)]), {HOOK: D_IN})
    w = writer.Writer(path)
    for p in range(n_prompts):
        rows = slice(p * rows_per_prompt, (p + 1) * rows_per_prompt)
        prov = {k: np.zeros(rows_per_prompt, dt) for k, dt in cache.PROVENANCE.items()}
        prov["prompt"][:], prov["step"][:], prov["branch"][:] = p, step[rows], 1
        prov["timestep"][:] = np.array([999, 500, 1])[step[rows]]
        w.append(HOOK, x[rows].numpy().astype(np.float16), prov)
        w.end_unit()
    w.commit()
    w.close()


def test_iter_batches_streams_only_selected_rows(tmp_path):
    write_store(tmp_path / "cache.h5")
    wanted = [1, 4, 7]
    endless = cache.iter_batches(tmp_path / "cache.h5", HOOK, 300, prompts=wanted, timesteps=[999], buffer_rows=1000, epochs=None)
    seen = torch.cat([b for _, b in zip(range(10), endless)])  # 10 x 300 rows from 3 x 134 selected: several epochs
    endless.close()
    assert seen.shape == (3000, D_IN) and seen.dtype == torch.float32
    assert set(seen[:, 0].round().int().tolist()) == {1, 4, 7}
    assert not torch.equal(seen[:300, 0], seen[:300, 0].sort().values)  # shuffled
    one_pass = list(cache.iter_batches(tmp_path / "cache.h5", HOOK, 500, prompts=wanted, epochs=1))
    assert [len(b) for b in one_pass] == [500, 500, 200]
    assert cache.count_rows(tmp_path / "cache.h5", HOOK, prompts=wanted, timesteps=[999]) == 3 * 134
    assert cache.prompts_with_rows(tmp_path / "cache.h5", HOOK).tolist() == list(range(12))


def test_cli_trains_from_store_with_held_out_prompts(tmp_path, capsys):
    write_store(tmp_path / "cache.h5")
    out = tmp_path / "sae"
    rc = main(["train", "--cache", str(tmp_path / "cache.h5"), "--hookpoint", HOOK, "--out", str(out), "--k", "4",
               "--expansion", "2", "--batch-size", "256", "--tokens", str(256 * 20), "--lr", "4e-3", "--val-fraction", "0.2"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == "topk" and metrics["tokens_seen"] == 256 * 20  # the small-width default set's
    assert metrics["val_prompts"] >= 1 and metrics["train_prompts"] + metrics["val_prompts"] == 12
    assert "validation FVU" in capsys.readouterr().out
    load_sae(out, expected_width=D_IN)
    assert json.loads((out / "train_config.json").read_text())["capture"] == "output"


def test_default_set_is_chosen_by_width_recorded_and_overridden_by_flags(tmp_path, capsys):
    from saeuron.train import DEFAULT_SETS, SD_MIN_WIDTH, choose_default_set, resolve_defaults

    assert [choose_default_set(w, "some/sd")[0].name for w in (32, 64, 96, SD_MIN_WIDTH - 1, 320, 640, 1280)] == \
        ["small"] * 4 + ["saeuron"] * 3
    assert choose_default_set(64, "minicanvas") == (DEFAULT_SETS["small"], "model minicanvas")
    # Stable Diffusion widths: SAeUron's recipe, k = width / 40
    sd = resolve_defaults(TrainConfig(out="x", hookpoint=HOOK), 1280, "runwayml/stable-diffusion-v1-5")
    assert (sd.defaults, sd.arch, sd.k, sd.expansion, sd.lr, sd.aux_loss_coefficient) == ("saeuron", "batchtopk", 32, 16, 4e-4, 1 / 32)
    assert sd.default_set["given"] == {} and sd.default_set["chosen_by"] == "width 1280 >= 320"
    assert resolve_defaults(sd, 64) == sd  # resolved once: a resumed run keeps its set

    write_store(tmp_path / "cache.h5", model="some/sd-model")  # not minicanvas: the width (32) chooses
    base = ["train", "--cache", str(tmp_path / "cache.h5"), "--hookpoint", HOOK, "--tokens", str(1024 * 2), "--checkpoints", "0"]

    def saved(name: str) -> dict:
        return json.loads((tmp_path / name / "train_config.json").read_text())

    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    assert "default set 'small'" in capsys.readouterr().out
    auto = saved("auto")
    values = auto["default_set"]["values"]
    assert auto["defaults"] == "small" and auto["default_set"]["name"] == "small"
    assert auto["default_set"]["chosen_by"] == f"width {D_IN} < {SD_MIN_WIDTH}" and auto["default_set"]["given"] == {}
    assert values == {"arch": "topk", "k": 4, "expansion": 4, "lr": 1e-2, "aux_loss_coefficient": 1.0, "batch_size": 1024}
    assert {f: auto[f] for f in values} == values  # every resolved value is the set's

    assert main([*base, "--out", str(tmp_path / "given"), "--lr", "3e-3", "--arch", "batchtopk"]) == 0
    given = saved("given")
    assert (given["lr"], given["arch"]) == (3e-3, "batchtopk") and given["default_set"]["given"] == {"arch": "batchtopk", "lr": 3e-3}
    assert {f: given[f] for f in ("k", "expansion", "aux_loss_coefficient", "batch_size")} == \
        {"k": 4, "expansion": 4, "aux_loss_coefficient": 1.0, "batch_size": 1024}
    assert json.loads((tmp_path / "given" / "metrics.json").read_text())["arch"] == "batchtopk"

    assert main([*base, "--out", str(tmp_path / "named"), "--defaults", "saeuron", "--k", "2", "--batch-size", "256"]) == 0
    named = saved("named")
    assert named["default_set"]["chosen_by"] == "given" and named["defaults"] == "saeuron"
    assert (named["arch"], named["lr"], named["aux_loss_coefficient"], named["expansion"], named["k"], named["batch_size"]) == \
        ("batchtopk", 4e-4, 1 / 32, 16, 2, 256)
    # the demo's SAEs: a named set, the values its ablation settings were chosen on
    assert DEFAULT_SETS["demo"].values(64) == {"arch": "topk", "k": 8, "expansion": 16, "lr": 1e-2, "aux_loss_coefficient": 1.0,
                                               "batch_size": 4096}
    assert DEFAULT_SETS["demo"].values(96)["k"] == 8 and DEFAULT_SETS["small"].values(96)["k"] == 12


def test_train_config_records_the_signal_the_store_holds(tmp_path):
    """An SAE trained on residuals (output - input) says so: ablation must edit the same signal."""
    write_store(tmp_path / "res.h5", capture="residual")
    out = tmp_path / "sae"
    assert main(["train", "--cache", str(tmp_path / "res.h5"), "--hookpoint", HOOK, "--out", str(out), "--k", "4",
                 "--expansion", "2", "--batch-size", "256", "--tokens", str(256 * 2)]) == 0
    assert json.loads((out / "train_config.json").read_text())["capture"] == "residual"


def test_cli_user_errors(tmp_path, capsys):
    write_store(tmp_path / "cache.h5")
    rc = main(["train", "--cache", str(tmp_path / "cache.h5"), "--hookpoint", "mid_block", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "mid_block" in err and HOOK in err
    assert main(["train", "--cache", str(tmp_path / "missing.h5"), "--hookpoint", HOOK, "--out", str(tmp_path / "o")]) == 2
    assert main(["train", "--cache", str(tmp_path / "cache.h5"), "--hookpoint", HOOK, "--out", str(tmp_path / "o"), "--k", "0"]) == 2
    assert "--k: 0 is out of range" in capsys.readouterr().err
    assert main(["train", "--cache", str(tmp_path / "cache.h5"), "--hookpoint", HOOK, "--out", str(tmp_path / "o"), "--timesteps", "7"]) == 2
    assert "--timesteps 7" in capsys.readouterr().err
    write_store(tmp_path / "one.h5", n_prompts=1)
    assert main(["train", "--cache", str(tmp_path / "one.h5"), "--hookpoint", HOOK, "--out", str(tmp_path / "o")]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_trained_on_a_real_cache_store(tiny_run):
    """The session run's SAE came from a `saeuron cache` store: whole prompts were held out, L0 is about k."""
    from conftest import TINY_HOOKPOINT

    from saeuron.cache import open_store

    sae_dir = tiny_run / "saes" / TINY_HOOKPOINT
    metrics = json.loads((sae_dir / "metrics.json").read_text())
    width = open_store(tiny_run / "cache.h5").widths[TINY_HOOKPOINT]
    assert metrics["d_in"] == width and metrics["val_prompts"] >= 1 and metrics["train_prompts"] >= 1
    assert abs(metrics["val_l0"] - metrics["k"]) < 0.5 * metrics["k"]  # the calibrated BatchTopK threshold
    load_sae(sae_dir, expected_width=width, hookpoint=TINY_HOOKPOINT)


def _train_until_checkpoint(command: list[str], out: Path, after: int, env: dict) -> None:
    """Run `command` and SIGKILL it once `out` holds a finished checkpoint of more than `after` tokens."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:
        while proc.poll() is None and time.time() < deadline:
            done = [int(p.name) for p in (out / "checkpoints").glob("*") if p.name.isdigit() and (p / "saeuron_state.json").is_file()]
            if done and max(done) > after:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait() == -signal.SIGKILL, "training ended before it could be killed"
    finally:
        proc.kill()


def test_sigkill_at_two_points_then_resume_equals_uninterrupted(tmp_path):
    """`saeuron train` killed with SIGKILL after a checkpoint, resumed, killed again, resumed: the same SAE as one run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    write_store(tmp_path / "cache.h5")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--cache", str(tmp_path / "cache.h5"), "--hookpoint", HOOK, "--arch", "topk", "--k", "4", "--expansion", "4",
            "--batch-size", "256", "--tokens", str(256 * 3000), "--lr", "4e-3", "--checkpoints", "30"]
    command = [sys.executable, "-m", "saeuron.cli", "train", *args]
    killed = tmp_path / "killed"
    _train_until_checkpoint([*command, "--out", str(killed)], killed, 0, env)
    first = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    _train_until_checkpoint([*command, "--out", str(killed), "--resume"], killed, first, env)
    for out in ([str(killed), "--resume"], [str(tmp_path / "whole")]):
        done = subprocess.run([*command, "--out", *out], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_file(killed / "sae_weights.safetensors"), load_file(tmp_path / "whole" / "sae_weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "whole"))
    assert (ma["steps"], ma["tokens_seen"], ma["val_fvu"]) == (mb["steps"], mb["tokens_seen"], mb["val_fvu"])
