"""Hookpoint listing, capture and intervention on a tiny random-weight minicanvas pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from einops import rearrange

from saeuron import cli, hooks
from saeuron.errors import UserError
from saeuron.pipelines import SamplerConfig, sample

HP1, HP2 = "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"
PROMPTS = ["a circle in neon style", "a star"]
SEEDS = [0, 1]
CFG = SamplerConfig(steps=3, cfg=4.0, batch_size=2)


@pytest.fixture(scope="module")
def pipe(random_minicanvas_pipe):
    return random_minicanvas_pipe


@pytest.fixture(scope="module")
def reference(pipe):
    return sample(pipe, PROMPTS, SEEDS, CFG)


def _no_hooks(pipe):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in pipe.unet.modules())


def test_list_hookpoints(pipe):
    hps = {h.path: h for h in hooks.list_hookpoints(pipe)}
    for i in range(3):
        assert hps[f"up_blocks.1.attentions.{i}"] == hooks.Hookpoint(f"up_blocks.1.attentions.{i}", 256, 64, "Transformer2DModel")
    assert all(h.kind == "Transformer2DModel" for h in hps.values())
    every = {h.path: h for h in hooks.list_hookpoints(pipe, all_modules=True)}
    assert set(hps) < set(every) and every["conv_in"].width == 32 and every["conv_in"].tokens == 1024
    assert _no_hooks(pipe)


def test_resolve_unknown_names_valid_ones(pipe):
    assert hooks.resolve_module(pipe, HP1) is pipe.unet.up_blocks[1].attentions[1]
    with pytest.raises(UserError, match=r"unknown hookpoint 'up_blocks\.9'.*up_blocks\.1\.attentions\.1"):
        hooks.resolve_module(pipe, "up_blocks.9")


def test_capture_records_branches_steps_and_keeps_images(pipe, reference):
    calls = []
    with hooks.capture(pipe, [HP1, HP2], lambda *a: calls.append(a), branch="both", steps=[0, 2]) as cap:
        images = sample(pipe, PROMPTS, SEEDS, CFG, on_step=cap.on_step)
    assert torch.equal(images, reference)
    assert _no_hooks(pipe)
    keys = [(hp, step, branch) for hp, step, _, branch, _ in calls]
    assert sorted(keys) == sorted((hp, s, b) for hp in (HP1, HP2) for s in (0, 2) for b in ("uncond", "cond"))
    timesteps = {step: t for _, step, t, _, _ in calls}
    assert timesteps[0] > timesteps[2]
    assert all(acts.shape == (2, 256, 64) for *_, acts in calls)


def test_capture_output_and_residual_match_manual_hook(pipe):
    module = hooks.resolve_module(pipe, HP1)
    manual = []

    def hook(mod, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output.sample
        manual.append((args[0].clone(), out.clone()))

    got = {"output": [], "residual": []}
    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with hooks.capture(pipe, [HP1], lambda hp, s, t, b, a: got["output"].append(a), branch="cond") as c1, hooks.capture(
            pipe, [HP1], lambda hp, s, t, b, a: got["residual"].append(a), branch="cond", capture="residual"
        ) as c2:
            sample(pipe, PROMPTS, SEEDS, CFG, on_step=lambda i, t: (c1.on_step(i, t), c2.on_step(i, t)))
    finally:
        handle.remove()
    assert len(manual) == len(got["output"]) == len(got["residual"]) == CFG.steps
    for (inp, out), o, r in zip(manual, got["output"], got["residual"]):
        cond_out, cond_in = out.chunk(2)[1], inp.chunk(2)[1]
        assert torch.equal(o, rearrange(cond_out, "b d h w -> b (h w) d"))
        assert torch.equal(r, rearrange(cond_out - cond_in, "b d h w -> b (h w) d"))


def test_capture_without_on_step_counts_steps(pipe):
    steps = []
    with hooks.capture(pipe, [HP1], lambda hp, s, t, b, a: steps.append(s), branch="uncond"):
        sample(pipe, PROMPTS, SEEDS, SamplerConfig(steps=3, batch_size=1))
    assert steps == [0, 1, 2, 0, 1, 2]


def test_hooks_removed_on_exception(pipe):
    def boom(*_):
        raise RuntimeError("sink failed")

    with pytest.raises(RuntimeError, match="sink failed"):
        with hooks.capture(pipe, [HP1], boom) as cap:
            sample(pipe, PROMPTS[:1], SEEDS[:1], CFG, on_step=cap.on_step)
    with pytest.raises(RuntimeError, match="inside"):
        with hooks.intervene(pipe, HP1, lambda a, s, t: a):
            raise RuntimeError("inside")
    assert _no_hooks(pipe)


def test_capture_rejects_bad_options(pipe):
    with pytest.raises(UserError, match="branch 'both-ish'"):
        hooks.capture(pipe, [HP1], print, branch="both-ish")
    with pytest.raises(UserError, match="capture 'input'"):
        hooks.capture(pipe, [HP1], print, capture="input")
    with pytest.raises(UserError, match="unknown hookpoint 'nope'"):
        hooks.capture(pipe, ["nope"], print)


def test_intervene_identity_zero_and_steps(pipe, reference):
    seen = []

    def identity(acts, step, t):
        seen.append((step, acts.shape))
        return acts

    with hooks.intervene(pipe, HP1, identity) as iv:
        same = sample(pipe, PROMPTS, SEEDS, CFG, on_step=iv.on_step)
    assert torch.equal(same, reference)
    assert [s for s, _ in seen] == [0, 1, 2] and all(shape == (4, 256, 64) for _, shape in seen)

    captured = []
    with hooks.intervene(pipe, HP1, lambda a, s, t: torch.zeros_like(a)), hooks.capture(pipe, [HP1], lambda *a: captured.append(a[-1]), branch="both"):
        changed = sample(pipe, PROMPTS, SEEDS, CFG)
    assert not torch.equal(changed, reference)
    assert all(torch.count_nonzero(a) == 0 for a in captured)  # capture sees the replaced output
    assert _no_hooks(pipe)
    with pytest.raises(UserError, match="must return a tensor of shape"):
        with hooks.intervene(pipe, HP1, lambda a, s, t: a[:, :3]):
            sample(pipe, PROMPTS[:1], SEEDS[:1], CFG)
    assert _no_hooks(pipe)


def test_residual_intervention_sees_output_minus_input_and_is_exact_when_unchanged(pipe, reference):
    with hooks.intervene(pipe, HP1, lambda a, s, t: a, capture="residual") as iv:
        assert torch.equal(sample(pipe, PROMPTS, SEEDS, CFG, on_step=iv.on_step), reference)
    seen, recorded = [], []
    with hooks.intervene(pipe, HP1, lambda a, s, t: seen.append(a.clone()) or a, capture="residual") as iv, hooks.capture(
        pipe, [HP1], lambda hp, s, t, b, a: recorded.append(a.clone()), branch="both", capture="residual"
    ) as cap:
        sample(pipe, PROMPTS, SEEDS, CFG, on_step=lambda i, t: (iv.on_step(i, t), cap.on_step(i, t)))
    assert len(seen) == CFG.steps and len(recorded) == 2 * CFG.steps
    for i, acts in enumerate(seen):  # the batch is [uncond; cond], as capture's two branches
        assert torch.equal(acts, torch.cat(recorded[2 * i : 2 * i + 2]))
    # adding d to the residual adds d to the block output, as on the output itself
    d = torch.full((1, 1, 64), 0.5)
    with hooks.intervene(pipe, HP1, lambda a, s, t: a + d, capture="residual") as iv:
        via_residual = sample(pipe, PROMPTS, SEEDS, CFG, on_step=iv.on_step)
    with hooks.intervene(pipe, HP1, lambda a, s, t: a + d) as iv:
        via_output = sample(pipe, PROMPTS, SEEDS, CFG, on_step=iv.on_step)
    torch.testing.assert_close(via_residual, via_output, atol=1e-4, rtol=1e-4)
    assert not torch.equal(via_output, reference)
    with pytest.raises(UserError, match="capture 'input'"):
        hooks.intervene(pipe, HP1, lambda a, s, t: a, capture="input")


def test_cli_hookpoints(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path / "model")
    assert cli.main(["hookpoints", "--model", str(tmp_path / "model"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"path": HP1, "tokens": 256, "width": 64, "kind": "Transformer2DModel"} in rows
    assert cli.main(["hookpoints", "--model", str(tmp_path / "model")]) == 0
    assert f"{HP2}\t256 x 64\tTransformer2DModel" in capsys.readouterr().out
