"""The HDF5 activation store: contents, reader, resume (including after SIGKILL), refusals, shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from saeuron import cache, cli, hooks
from saeuron.cache import writer
from saeuron.errors import UserError
from saeuron.pipelines import SamplerConfig, sample

HP1, HP2 = "up_blocks.1.attentions.1", "mid_block.attentions.0"
PROMPTS = [
    {"prompt": "a circle in neon style", "style": "neon", "object": "circle"},
    {"prompt": "a star in neon style", "style": "neon", "object": "star"},
    {"prompt": "a circle in noir style", "style": "noir", "object": "circle"},
]
CONFIG = cache.CacheConfig(hookpoints=(HP1, HP2), seeds=(0, 1), steps=3, batch_size=4, branch="both")


@pytest.fixture(scope="module")
def pipe(random_minicanvas_pipe):
    return random_minicanvas_pipe


@pytest.fixture(scope="module")
def store(pipe, tmp_path_factory):
    """One store of 3 prompts x 2 seeds x 3 steps x both branches, and the images made while caching."""
    path = tmp_path_factory.mktemp("cache") / "run.h5"
    images = {}
    cache.cache_activations(pipe, PROMPTS, path, CONFIG, progress=False, on_images=lambda u, im: images.__setitem__(u, im))
    return path, torch.cat([images[u] for u in sorted(images)])


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", swmr=True) as f:
        out = {"progress": f["progress"][()]}
        for hp in f["acts"]:
            out[f"acts/{hp}"] = f["acts"][hp][()]
            for k in f["rows"][hp]:
                out[f"rows/{hp}/{k}"] = f["rows"][hp][k][()]
    return out


def _assert_same(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k


def test_store_layout_and_provenance(pipe, store):
    path, _ = store
    info = cache.open_store(path)
    n_rows = 3 * 2 * 3 * 2 * 256  # prompts x seeds x steps x branches x positions
    assert info.rows == {HP1: n_rows, HP2: 3 * 2 * 3 * 2 * 64}
    assert info.widths == {HP1: 64, HP2: 96} and info.complete and info.units_done == info.units_total == 2
    assert info.prompts == PROMPTS and info.config["hookpoints"] == [HP1, HP2] and info.config["steps"] == 3
    with h5py.File(path, "r", swmr=True) as f:
        assert f.attrs["format"] == cache.FORMAT and f.attrs["format_version"] == cache.FORMAT_VERSION
        d = f["acts"][HP1]
        assert d.dtype == np.float16 and d.chunks is not None and d.shape == (n_rows, 64)
    prov = cache.row_provenance(path, HP1)
    assert set(prov) == {"prompt", "seed", "step", "timestep", "branch", "position"}
    assert sorted(set(zip(prov["prompt"].tolist(), prov["seed"].tolist()))) == [(p, s) for p in range(3) for s in (0, 1)]
    assert set(prov["step"].tolist()) == {0, 1, 2} and set(prov["branch"].tolist()) == {0, 1}
    assert np.bincount(prov["position"]).tolist() == [3 * 2 * 3 * 2] * 256


def test_stored_rows_equal_captured_activations(pipe, store):
    path, _ = store
    captured = []
    prompts = [p["prompt"] for p in PROMPTS for _ in (0, 1)]
    seeds = [s for _ in PROMPTS for s in (0, 1)]
    with hooks.capture(pipe, [HP1], lambda hp, s, t, b, a: captured.append((s, b, a)), branch="cond") as cap:
        sample(pipe, prompts[:4], seeds[:4], SamplerConfig(steps=3, batch_size=4), on_step=cap.on_step)
    prov = cache.row_provenance(path, HP1)
    acts = cache.read_rows(path, HP1)
    step, branch, a = captured[1]
    mask = (prov["step"] == step) & (prov["branch"] == 1) & (prov["prompt"] == 1) & (prov["seed"] == 1)
    order = np.argsort(prov["position"][mask])
    expected = a[3].to(torch.float16).float()  # pair 3 = prompt 1, seed 1
    assert torch.equal(acts[np.flatnonzero(mask)[order]], expected)


def test_images_not_disturbed_by_caching(pipe, store):
    _, images = store
    prompts = [p["prompt"] for p in PROMPTS for _ in (0, 1)]
    seeds = [s for _ in PROMPTS for s in (0, 1)]
    assert torch.equal(images, sample(pipe, prompts, seeds, SamplerConfig(steps=3, cfg=CONFIG.cfg, batch_size=4)))


def test_iter_batches_covers_every_row_once(store):
    path, _ = store
    every = cache.read_rows(path, HP2)
    batches = list(cache.iter_batches(path, HP2, batch_size=100, shuffle=True, seed=1, buffer_rows=300))
    assert all(b.dtype == torch.float32 and b.shape[1] == 96 for b in batches)
    assert all(len(b) == 100 for b in batches[:-1]) and sum(len(b) for b in batches) == len(every)
    got = torch.cat(batches)
    assert not torch.equal(got, every)  # shuffled
    key = lambda t: np.lexsort(t.numpy().T[::-1])  # noqa: E731
    assert torch.equal(got[key(got)], every[key(every)])
    ordered = torch.cat(list(cache.iter_batches(path, HP2, batch_size=1000, shuffle=False)))
    assert torch.equal(ordered, every)
    assert sum(len(b) for b in cache.iter_batches(path, HP2, batch_size=100, drop_last=True)) == (len(every) // 100) * 100


def test_iter_batches_filters(store):
    path, _ = store
    prov = cache.row_provenance(path, HP1)
    every = cache.read_rows(path, HP1)
    t0 = int(prov["timestep"][prov["step"] == 0][0])
    cases = [
        (dict(branch="cond"), prov["branch"] == 1),
        (dict(concept=("style", "noir")), prov["prompt"] == 2),
        (dict(concept=("object", "circle"), timesteps=[t0]), np.isin(prov["prompt"], [0, 2]) & (prov["timestep"] == t0)),
        (dict(steps=[1, 2], branch="uncond"), (prov["step"] >= 1) & (prov["branch"] == 0)),
    ]
    for kwargs, mask in cases:
        got = torch.cat(list(cache.iter_batches(path, HP1, batch_size=512, shuffle=False, **kwargs)))
        assert torch.equal(got, every[mask]), kwargs
    with pytest.raises(UserError, match="no prompt of style 'lava'.*neon, noir"):
        next(cache.iter_batches(path, HP1, concept=("style", "lava")))
    with pytest.raises(UserError, match="hookpoint 'down_blocks.0' is not in .*up_blocks.1.attentions.1"):
        next(cache.iter_batches(path, "down_blocks.0"))


def test_iter_batches_epochs_prompts_and_empty_selection(store):
    path, _ = store
    prov = cache.row_provenance(path, HP1)
    every = cache.read_rows(path, HP1)
    mask = np.isin(prov["prompt"], [0, 2]) & (prov["branch"] == 1)
    batches = list(cache.iter_batches(path, HP1, batch_size=100, seed=3, buffer_rows=300, prompts=[2, 0], branch="cond", epochs=2))
    assert all(len(b) == 100 for b in batches[:-1]) and sum(len(b) for b in batches) == 2 * int(mask.sum())
    got, want = torch.cat(batches), torch.cat([every[mask]] * 2)
    key = lambda t: np.lexsort(t.numpy().T[::-1])  # noqa: E731
    assert torch.equal(got[key(got)], want[key(want)])  # every selected row exactly twice
    endless = cache.iter_batches(path, HP1, batch_size=500, prompts=[1], epochs=None)
    assert all(len(next(endless)) == 500 for _ in range(3 * int((prov["prompt"] == 1).sum()) // 500))  # past the first epoch, batches stay full
    endless.close()
    assert cache.count_rows(path, HP1, prompts=[0, 2], branch="cond") == int(mask.sum())
    assert cache.count_rows(path, HP1) == len(every)
    assert cache.prompts_with_rows(path, HP1).tolist() == [0, 1, 2]
    for kwargs in (dict(timesteps=[-5]), dict(prompts=[]), dict(prompts=[7], epochs=None)):
        with pytest.raises(UserError, match="no rows of .* match the selection"):
            next(cache.iter_batches(path, HP1, **kwargs))


def test_refusals(pipe, store, tmp_path):
    path, _ = store
    with pytest.raises(UserError, match="already exists; pass --resume"):
        cache.cache_activations(pipe, PROMPTS, path, CONFIG, progress=False)
    with pytest.raises(UserError, match=r"different config \(steps: 3 there vs 4 now\)"):
        cache.cache_activations(pipe, PROMPTS, path, replace(CONFIG, steps=4), resume=True, progress=False)
    with pytest.raises(UserError, match="prompt list differs"):
        cache.cache_activations(pipe, PROMPTS[:2], path, CONFIG, resume=True, progress=False)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        cache.open_store(garbage)
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        cache.cache_activations(pipe, PROMPTS, garbage, CONFIG, resume=True, progress=False)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(UserError, match="not a saeuron activation store"):
        cache.open_store(foreign)
    with pytest.raises(UserError, match="not found"):
        cache.open_store(tmp_path / "missing.h5")
    for bad, match in [
        (dict(branch="left"), "unknown --branch 'left'"),
        (dict(timesteps="every:0"), "bad --timesteps 'every:0'"),
        (dict(timesteps="1,7"), r"step indices must be in 0\.\.2"),
        (dict(positions="some"), "bad --positions 'some'"),
        (dict(hookpoints=("up_blocks.7",)), "unknown hookpoint 'up_blocks.7'"),
    ]:
        with pytest.raises(UserError, match=match):
            cache.cache_activations(pipe, PROMPTS, tmp_path / "new.h5", replace(CONFIG, **bad), progress=False)
    assert not (tmp_path / "new.h5").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(path.parent.glob("*.tmp"))


def test_timesteps_positions_and_residual(pipe, tmp_path):
    config = replace(CONFIG, hookpoints=(HP1,), branch="cond", timesteps="every:2", positions="random:5", capture="residual")
    path = cache.cache_activations(pipe, PROMPTS[:1], tmp_path / "sub.h5", config, progress=False)
    prov = cache.row_provenance(path, HP1)
    assert len(prov["step"]) == 2 * 2 * 5 and set(prov["step"].tolist()) == {0, 2} and set(prov["branch"].tolist()) == {1}
    per_image = prov["position"].reshape(-1, 5)
    assert all(len(set(r)) == 5 and list(r) == sorted(r) for r in per_image.tolist())


def test_resume_drops_partial_unit(pipe, store, tmp_path, monkeypatch):
    config = replace(CONFIG, batch_size=1, steps=2)
    full = cache.cache_activations(pipe, PROMPTS[:2], tmp_path / "full.h5", config, progress=False)
    write_progress = writer.Writer._write_progress
    calls = {"n": 0}

    def failing_write_progress(self):
        calls["n"] += 1
        if calls["n"] == 3:  # the rows of unit 3 are written but never committed
            raise KeyboardInterrupt
        write_progress(self)

    monkeypatch.setattr(writer.Writer, "_write_progress", failing_write_progress)
    part = tmp_path / "part.h5"
    with pytest.raises(KeyboardInterrupt):
        cache.cache_activations(pipe, PROMPTS[:2], part, config, progress=False, commit_mb=0)
    with h5py.File(part, "r") as f:
        assert f["progress"].shape[0] == 2 and f["acts"][HP1].shape[0] > f["progress"][1][0]
    assert cache.open_store(part).rows[HP1] == 2 * 2 * 2 * 256  # readers see only committed units
    monkeypatch.setattr(writer.Writer, "_write_progress", write_progress)
    cache.cache_activations(pipe, PROMPTS[:2], part, config, resume=True, progress=False)
    _assert_same(part, full)


def test_sigkill_then_resume_equals_uninterrupted(pipe, tmp_path):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a circle\na square in neon style\na star\n")
    args = ["cache", "--model", str(model), "--hookpoints", f"{HP1},{HP2}", "--prompts", str(prompts), "--seeds", "0-2", "--steps", "2", "--batch-size", "1", "--commit-mb", "0", "--quiet"]
    killed = tmp_path / "killed.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "saeuron.cli", *args]
    proc = subprocess.Popen([*command, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = 0
    deadline = time.time() + 120
    try:
        while units < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                with h5py.File(killed, "r", swmr=True) as f:
                    units = f["progress"].shape[0]
            except (OSError, KeyError):
                continue
        assert proc.poll() is None, "the caching run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 2 <= units < 9
    with pytest.raises(OSError):  # a killed SWMR writer leaves the file flagged as open
        h5py.File(killed, "r+", libver="latest").close()
    assert cli.main([*args, "--out", str(killed)]) == 2  # exists: refused without --resume
    # every run in a fresh process: the same unit computed in-process can differ in the last bit (MKL)
    for out in ([str(killed), "--resume"], [str(tmp_path / "whole.h5")]):
        done = subprocess.run([*command, "--out", *out], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(killed, tmp_path / "whole.h5")
    info = cache.open_store(killed)
    assert info.complete and info.prompts[1] == {"prompt": "a square in neon style"} and info.concept_set.kinds == ()


def test_shards_with_manifest(pipe, store, tmp_path, monkeypatch):
    path, _ = store
    folder = tmp_path / "sharded.h5"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cache.cache_activations(pipe, PROMPTS, folder, CONFIG, progress=False) == folder
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert len(manifest["shards"]) == 2
    info, single = cache.open_store(folder), cache.open_store(path)
    assert info.rows == single.rows and info.complete and info.prompts == PROMPTS
    for hp in (HP1, HP2):
        a, b = cache.read_rows(folder, hp), cache.read_rows(path, hp)
        assert torch.equal(a, b)  # units are interleaved over ranks, and shard 1 holds the last unit
        assert sum(len(x) for x in cache.iter_batches(folder, hp, batch_size=999, concept=("style", "neon"))) == int(
            np.isin(cache.row_provenance(path, hp)["prompt"], [0, 1]).sum()
        )
        assert cache.count_rows(folder, hp, prompts=[0, 1]) == cache.count_rows(path, hp, concept=("style", "neon"))
        assert cache.prompts_with_rows(folder, hp).tolist() == [0, 1, 2]


def test_two_processes_under_torchrun_write_shards_that_read_as_one_store(pipe, tmp_path):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a circle\na square in neon style\na star\na ring in lava style\n")
    args = ["cache", "--model", str(model), "--hookpoints", HP1, "--prompts", str(prompts), "--seeds", "0", "--steps", "2",
            "--batch-size", "1", "--commit-mb", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sharded = tmp_path / "sharded.h5"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "saeuron.cli", *args, "--out", str(sharded)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    single = tmp_path / "single.h5"
    done = subprocess.run([sys.executable, "-m", "saeuron.cli", *args, "--out", str(single)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads((sharded / cache.MANIFEST).read_text())["shards"]) == 2
    info = cache.open_store(sharded)
    assert info.complete and info.rows == cache.open_store(single).rows
    # shards hold interleaved units: compare rows in provenance order
    def ordered(path):
        prov = cache.row_provenance(path, HP1)
        order = np.lexsort([prov[k] for k in ("position", "step", "branch", "seed", "prompt")])
        return cache.read_rows(path, HP1)[torch.from_numpy(order)], {k: v[order] for k, v in prov.items()}

    (a, prov_a), (b, prov_b) = ordered(sharded), ordered(single)
    assert torch.equal(a, b)
    assert all(np.array_equal(prov_a[k], prov_b[k]) for k in prov_a)


@pytest.mark.parametrize("width", [None, 3])
def test_chunk_appender_writes_exactly_the_appended_rows(tmp_path, width):
    """Aligned whole-chunk arrays (kept by reference), unaligned ones and other dtypes (copied),
    commits in between and reopening mid-chunk (as --resume does) give back every row in order."""
    rng = np.random.default_rng(0)
    shape = () if width is None else (width,)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("d", shape=(0, *shape), maxshape=(None, *shape), chunks=(8, *shape), dtype=np.int32)
    expected = []
    for session in range(3):  # reopen: the partial last chunk is read back and rewritten
        with h5py.File(path, "r+", libver="latest") as f:
            f.swmr_mode = True
            appender = writer.ChunkAppender(f["d"])
            for n in [16, 8, 5, 8, 3, 24, 0, 11]:
                rows = rng.integers(-1000, 1000, (n, *shape)).astype(np.int32 if n % 2 == 0 else np.int64)
                appender.append(rows)
                expected.append(rows.astype(np.int32))
                if rng.uniform() < 0.4:
                    appender.write()
            appender.write()
            if session == 1:
                appender.append(np.ones((4, *shape), np.int32))  # queued, never written: must not appear
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["d"][:], np.concatenate(expected))
