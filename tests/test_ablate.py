import numpy as np
import pytest
import torch

from saeuron.ablate import AblationPlan, StepAblation, ablate_acts, merge_plans, plan_ablation, steer_acts
from saeuron.concepts import ConceptMeanAccumulator, ConceptScores, select_features
from saeuron.errors import UserError


@pytest.fixture(scope="module")
def sae():
    from sae_lens import SAE, TopKSAEConfig

    torch.manual_seed(0)
    return SAE.from_dict(TopKSAEConfig(d_in=16, d_sae=64, k=8).to_dict()).eval()


def test_nothing_selected_returns_block_output_exactly(sae):
    x = torch.randn(2, 10, 16)
    empty = StepAblation(torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0))
    assert torch.equal(ablate_acts(sae, x, None), x)
    assert torch.equal(ablate_acts(sae, x, empty), x)
    # a selection that never fires (threshold above every activation) also leaves x exactly
    never = StepAblation(torch.tensor([0, 1]), torch.tensor([-5.0, -5.0]), torch.tensor([1e9, 1e9]))
    assert torch.equal(ablate_acts(sae, x, never), x)


def test_ablation_keeps_reconstruction_error_and_changes_only_selected_direction(sae):
    with torch.no_grad():
        x = torch.randn(1, 6, 16)
        f = sae.encode(x)
        i = int(f[0, 0].argmax())
        step = StepAblation(torch.tensor([i]), torch.tensor([-2.0]), torch.tensor([0.0]))
        out = ablate_acts(sae, x, step)
        f_new = f.clone()
        f_new[..., i] = torch.where(f[..., i] > 0, f[..., i] * -2.0, f[..., i])
        expected = x + (f_new - f)[..., i : i + 1] * sae.W_dec[i]
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, x)


def test_ablation_decodes_only_the_changed_latents_as_the_full_decoder_does(sae, monkeypatch):
    import saeuron.ablate as ablate

    with torch.no_grad():
        x = torch.randn(3, 7, 16)
        step = StepAblation(torch.tensor([1, 5, 9, 30]), torch.tensor([-3.0, -1.0, -10.0, -0.5]), torch.tensor([0.0, 0.1, 0.0, 0.2]))
        fast = ablate_acts(sae, x, step)
        monkeypatch.setattr(ablate, "_linear_decoder", lambda sae: False)  # x + decode(f') - decode(f), in full
        torch.testing.assert_close(fast, ablate_acts(sae, x, step), atol=1e-5, rtol=1e-5)


def test_steering(sae):
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(steer_acts(sae, x, 3, 2.0, "add"), x + 2.0 * sae.W_dec[3])
    with torch.no_grad():
        assert torch.equal(steer_acts(sae, x, 3, 1.0, "scale"), x)
    with pytest.raises(UserError, match="feature 999 out of range"):
        steer_acts(sae, x, 999, 1.0)


def _toy_scores():
    concepts = ["style:a", "style:b", "style:c", "object:x", "object:y"]
    acc = ConceptMeanAccumulator(concepts, n_steps=2, n_features=6)
    rng = np.random.default_rng(0)
    for style, feat in (("a", 0), ("b", 1), ("c", 2)):
        for obj, ofeat in (("x", 3), ("y", 4)):
            for step in range(2):
                v = rng.uniform(0, 0.1, 6)
                v[feat] += 1.0
                v[ofeat] += 1.0
                acc.add([f"style:{style}", f"object:{obj}"], step, v)
    return acc.scores(np.array([900, 400]))


def test_scores_find_the_feature_of_each_concept(tmp_path):
    scores = _toy_scores()
    for c, feat in (("style:a", 0), ("style:b", 1), ("object:y", 4)):
        for t in range(2):
            assert select_features(scores.scores[scores.index(c)], top_n=1)[t][0] == feat
    scores.save(tmp_path / "concepts.h5")
    loaded = ConceptScores.load(tmp_path / "concepts.h5")
    assert loaded.concepts == scores.concepts and np.array_equal(loaded.scores, scores.scores)
    with pytest.raises(UserError, match="unknown concept 'style:zzz'"):
        loaded.index("style:zzz")


def test_plan_is_union_over_targets():
    scores = _toy_scores()
    plan = plan_ablation(scores, ["style:a", "style:b"], multiplier=-1.0, top_n=1)
    assert sorted(plan.steps) == [0, 1]
    assert plan.steps[0].features.tolist() == [0, 1]
    assert (plan.steps[0].scale < 0).all()
    with pytest.raises(UserError, match="must be negative"):
        plan_ablation(scores, ["style:a"], multiplier=2.0, top_n=1)


def test_sampler_steps_use_the_cached_step_of_nearest_timestep():
    scores = _toy_scores()  # cached steps 0, 1 at timesteps 900, 400
    plan = plan_ablation(scores, ["style:a"], multiplier=-1.0, top_n=1)
    assert plan.timesteps == {0: 900, 1: 400}
    # a sampler with more steps than the cache: every step maps to the step of nearest noise level
    assert plan.at(0, 999) is plan.steps[0] and plan.at(3, 700) is plan.steps[0]
    assert plan.at(5, 600) is plan.steps[1] and plan.at(9, 1) is plan.steps[1]
    # without a timestep (or without timesteps in the plan) the step index is used
    assert plan.at(1, None) is plan.steps[1]
    assert AblationPlan(plan.steps).at(1, 900) is plan.steps[1]
    # a step window leaves the other cached steps alone, whatever the sampler's step count
    windowed = plan_ablation(scores, ["style:a"], multiplier=-1.0, top_n=1, step_window=(1, 2))
    assert windowed.at(0, 950) is None and windowed.at(7, 350) is windowed.steps[1]


def test_a_later_start_leaves_the_first_steps_alone():
    from saeuron.ablate import start_step

    scores = _toy_scores()  # two cached steps
    assert start_step(0.2, 25) == 5 and start_step(0.0, 25) == 0
    assert sorted(plan_ablation(scores, ["style:a"], -1.0, top_n=1, start=0.0).steps) == [0, 1]  # the paper: every step
    late = plan_ablation(scores, ["style:a"], -1.0, top_n=1, start=0.5)
    assert sorted(late.steps) == [1] and late.at(0, 950) is None
    # with a step window, the later of the two beginnings holds
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=1, start=0.5, step_window=(0, 1)).steps == {}
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match=f"ablation start .* got {bad}"):
            plan_ablation(scores, ["style:a"], -1.0, top_n=1, start=bad)


def test_merged_plans_keep_every_feature_with_its_strongest_scale():
    scores = _toy_scores()
    a = plan_ablation(scores, ["style:a"], multiplier=-1.0, top_n=1)
    b = plan_ablation(scores, ["style:b"], multiplier=-5.0, top_n=1)
    strong_a = plan_ablation(scores, ["style:a"], multiplier=-10.0, top_n=1)
    merged = merge_plans(a, b, strong_a)
    assert merged.timesteps == a.timesteps
    for step in (0, 1):
        assert merged.steps[step].features.tolist() == [0, 1]
        assert merged.steps[step].scale[0] == strong_a.steps[step].scale[0]
        assert merged.steps[step].scale[1] == b.steps[step].scale[0]
    assert merge_plans().n_features() == 0


def test_exclusive_selection_leaves_out_features_another_kind_carries_more():
    concepts = ["style:a", "style:b", "object:x", "object:y"]
    acc = ConceptMeanAccumulator(concepts, n_steps=1, n_features=4)
    # feature 0: style a; feature 1: object x; feature 2: fires in style b, a bit more when the object is x
    for style, obj in (("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")):
        v = np.full(4, 0.05)
        v[0] += style == "a"
        v[1] += 0.1 * (obj == "x")
        v[2] += (style == "b") * (1.0 + 0.8 * (obj == "x"))
        acc.add([f"style:{style}", f"object:{obj}"], 0, v)
    scores = acc.scores(np.array([500]))
    x = scores.index("object:x")
    # plain SAeUron ranking picks the style-b feature for the object: it scores highest
    assert select_features(scores.scores[x], top_n=1)[0].tolist() == [2]
    assert plan_ablation(scores, ["object:x"], -1.0, top_n=1).steps[0].features.tolist() == [2]
    # exclusive selection keeps only the feature the object carries more than any style does
    assert scores.exclusive_scores(x)[0, 2] == 0 and scores.exclusive_scores(x)[0, 1] > 0
    assert plan_ablation(scores, ["object:x"], -1.0, top_n=2, selection="exclusive").steps[0].features.tolist() == [1]
    # a style's own feature is untouched by the filter
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=1, selection="exclusive").steps[0].features.tolist() == [0]


def test_specific_selection_also_leaves_out_features_another_concept_of_the_same_kind_carries_more():
    concepts = ["style:a", "style:b", "style:c", "style:d", "object:x"]
    acc = ConceptMeanAccumulator(concepts, n_steps=1, n_features=4)
    # feature 0: style a only; feature 1: fires in a, more in b (a palette both share); features 2, 3: styles c, d
    for style, v in (("a", [1.0, 0.8, 0, 0]), ("b", [0, 1.0, 0, 0]), ("c", [0, 0, 1.0, 0]), ("d", [0, 0, 0, 1.0])):
        acc.add([f"style:{style}", "object:x"], 0, np.asarray(v) + 0.05)
    scores = acc.scores(np.array([500]))
    a = scores.index("style:a")
    assert 0 < scores.scores[a, 0, 1] < scores.scores[scores.index("style:b"), 0, 1]  # shared, b's more than a's
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=2).steps[0].features.tolist() == [0, 1]
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=2, selection="exclusive").steps[0].features.tolist() == [0, 1]
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=2, selection="specific").steps[0].features.tolist() == [0]
    with pytest.raises(UserError, match="'nearest'"):
        plan_ablation(scores, ["style:a"], -1.0, top_n=2, selection="nearest")


def test_firing_thresholds_mean_over_the_kind_or_highest_kept_concept():
    concepts = ["style:a", "style:b", "style:c", "object:x"]
    acc = ConceptMeanAccumulator(concepts, n_steps=1, n_features=2)
    # feature 0 fires 1.0 in a and 0.8 in b (a neighbour that shares it); feature 1 is c's
    for style, v in (("a", [1.0, 0]), ("b", [0.8, 0]), ("c", [0.0, 1.0])):
        acc.add([f"style:{style}", "object:x"], 0, np.asarray(v))
    scores = acc.scores(np.array([500]))
    mean = plan_ablation(scores, ["style:a"], -1.0, top_n=1).steps[0]
    kept_max = plan_ablation(scores, ["style:a"], -1.0, top_n=1, firing="kept-max").steps[0]
    assert mean.features.tolist() == kept_max.features.tolist() == [0]
    assert mean.threshold.item() == pytest.approx(0.6)  # (1.0 + 0.8 + 0.0) / 3: b's typical activation passes it
    assert kept_max.threshold.item() == pytest.approx(0.8)  # b's mean: only activations above it are scaled
    both = plan_ablation(scores, ["style:a", "style:b"], -1.0, top_n=1, firing="kept-max").steps[0]
    assert both.threshold.item() == pytest.approx(0.0)  # only c is kept
    with pytest.raises(UserError, match="'median'"):
        plan_ablation(scores, ["style:a"], -1.0, top_n=1, firing="median")


def test_minimum_dominance_leaves_out_features_a_neighbour_fires_almost_as_strongly():
    concepts = ["style:a", "style:b", "style:c", "object:x"]
    acc = ConceptMeanAccumulator(concepts, n_steps=1, n_features=4)
    # feature 0: a's alone; feature 1: a's strongest, b fires it 0.6 as much (a shared palette); 2, 3: b's and c's
    for style, v in (("a", [0.5, 1.0, 0, 0]), ("b", [0, 0.6, 1.0, 0]), ("c", [0, 0, 0, 1.0])):
        acc.add([f"style:{style}", "object:x"], 0, np.asarray(v))
    scores = acc.scores(np.array([500]))
    a = scores.index("style:a")
    # rivals are every other concept: object x's mean over all images fires feature 0 a third as much as a
    assert scores.dominance(a)[0, 0] == pytest.approx(3.0) and scores.dominance(a)[0, 1] == pytest.approx(1 / 0.6)
    assert scores.dominance(scores.index("style:c"))[0, 3] == pytest.approx(3.0) and scores.dominance(a)[0, 3] == 0
    # the shared feature is a's and scores highest, so every selection rule keeps it ...
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=1, selection="specific").steps[0].features.tolist() == [1]
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=1, min_dominance=1.5).steps[0].features.tolist() == [1]
    # ... until a asks to fire it at least twice as strongly as any other concept: then a's own feature is chosen
    assert plan_ablation(scores, ["style:a"], -1.0, top_n=1, min_dominance=2.0).steps[0].features.tolist() == [0]
    with pytest.raises(UserError, match="-1"):
        plan_ablation(scores, ["style:a"], -1.0, top_n=1, min_dominance=-1.0)
