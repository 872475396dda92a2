
import numpy as np
import pytest

from saeuron.concept_set import ConceptSet
from saeuron.evaluate import AnswerSet, frechet_distance, markdown_report, minicanvas_grid, parse_target_spec, unlearning_metrics


def grid(styles, objects, seeds) -> AnswerSet:
    return AnswerSet(minicanvas_grid(styles, objects), tuple(seeds))


def style_object_seed(answers: AnswerSet) -> list[tuple[str, str, int]]:
    return [(t["style"], t["object"], k) for t, (_, k) in zip(answers.truth(), answers.rows())]


def test_unlearning_metrics_follow_unlearncanvas():
    answers = grid(("a", "b"), ("x", "y"), (0, 1))
    rows = style_object_seed(answers)
    # the target style 'a' is never recognised; other labels right, except one object on a 'b' image
    labels = [{"style": "b" if s == "a" else s, "object": o} for s, o, _ in rows]
    labels[-1]["object"] = "x"
    m = unlearning_metrics("style:a", answers, labels)
    assert m == {"UA": 100.0, "IRA": 100.0, "CRA": 100 * 7 / 8}
    m = unlearning_metrics("object:y", answers, labels)
    assert m["UA"] == pytest.approx(100 * 1 / 4) and m["CRA"] == pytest.approx(50.0)


def test_concepts_erased_together_count_in_no_retained_accuracy():
    answers = grid(("a", "b", "c"), ("x", "y"), (0,))
    rows = style_object_seed(answers)
    # styles a and b erased together (both unrecognised); c kept; style a's images also lose their object
    labels = [{"style": "c" if s in "ab" else s, "object": "y" if s == "a" else o} for s, o, _ in rows]
    alone = unlearning_metrics("style:a", answers, labels)
    assert alone["IRA"] == pytest.approx(50.0)  # b's images count as retained when a is erased alone
    m = unlearning_metrics("style:a", answers, labels, erased=["style:a", "style:b"])
    assert m["UA"] == 100.0 and m["IRA"] == 100.0 and m["CRA"] == pytest.approx(100 * 5 / 6)
    # a style and an object erased together: the object's images leave the style's CRA
    m = unlearning_metrics("style:a", answers, labels, erased=["style:a", "object:x"])
    assert m["CRA"] == 100.0  # only the y images count, and all keep their object


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 3) == pytest.approx(36, rel=1e-3)


def test_target_spec_and_report():
    assert parse_target_spec("all-styles")[0].startswith("style:")
    assert parse_target_spec("style:neon,object:star") == ["style:neon", "object:star"]
    from saeuron.errors import UserError

    with pytest.raises(UserError, match="bad target 'style:cubism'"):
        parse_target_spec("style:cubism")
    with pytest.raises(UserError, match="no concept kind 'artist'"):
        parse_target_spec("all-artists")
    assert parse_target_spec("all-artists", ["artist:monet", "artist:van gogh", "nudity:yes"]) == ["artist:monet", "artist:van gogh"]
    assert parse_target_spec("nudity:yes", ["artist:monet", "nudity:yes"]) == ["nudity:yes"]
    md = markdown_report({"targets": {"style:neon": {"UA": 90.0, "IRA": 80.0, "CRA": 70.0, "percentile": 99.7, "multiplier": -1.0}},
                          "mean": {"style": {"UA": 90.0, "IRA": 80.0, "CRA": 70.0}}, "base": {"style_accuracy": 99.0, "object_accuracy": 95.0}})
    assert "| style:neon | 90.0 | 80.0 | 70.0 |" in md
    header, rule = md.splitlines()[:2]  # a Markdown table: one delimiter cell per header cell
    assert rule.count("---") == header.count("|") - 1 and "start" in header


def test_tuning_set_has_every_target_image_and_a_few_of_each_other_concept():
    from saeuron.evaluate import full_answer_set, tuning_answer_set

    full = full_answer_set([100, 101])
    sub = tuning_answer_set("style:neon", [100, 101], retain_per_concept=2)
    rows = style_object_seed(sub)
    assert len(set(rows)) == len(rows) and set(rows) <= set(style_object_seed(full))
    assert sorted(r for r in rows if r[0] == "neon") == sorted(r for r in style_object_seed(full) if r[0] == "neon")
    others = [r for r in rows if r[0] != "neon"]
    assert len(others) == 2 * 9 and all(sum(r[0] == s for r in others) == 2 for s in full.concept_set.values("style") if s != "neon")
    assert len({r[1] for r in others}) > 5  # spread over the objects
    obj = style_object_seed(tuning_answer_set("object:star", [100], retain_per_concept=1))
    assert len(obj) == 10 + 9 and sum(r[1] == "star" for r in obj) == 10
    assert tuning_answer_set("style:neon", [100], None) == full_answer_set([100])
    labels = [{"style": s, "object": o} for s, o, _ in rows]
    assert unlearning_metrics("style:neon", sub, labels) == {"UA": 0.0, "IRA": 100.0, "CRA": 100.0}


def test_tuning_maximises_ua_plus_ira_and_breaks_ties_by_cra(monkeypatch):
    import saeuron.evaluate as ev

    # metrics of each (multiplier, dominance) as if measured: -5 and -1 at dominance 2 tie on (UA + IRA) / 2
    measured = {(-1.0, 0.0): (100, 80, 90), (-1.0, 2.0): (100, 90, 95), (-5.0, 0.0): (100, 90, 70), (-5.0, 2.0): (90, 70, 99)}
    monkeypatch.setattr(ev, "ablated_answer_set", lambda pipe, site, targets, answers, config, params: params[targets[0]])
    monkeypatch.setattr(ev, "_labels_of", lambda setting, judge: setting)
    monkeypatch.setattr(ev, "unlearning_metrics", lambda target, answers, setting: dict(
        zip(("UA", "IRA", "CRA"), measured[setting["multiplier"], setting["dominance"]])))
    grid = {"percentile": (99.7,), "multiplier": (-5.0, -1.0), "dominance": (0.0, 2.0)}
    best = ev.tune_target(None, None, "style:neon", [100], None, grid)
    assert (best["multiplier"], best["dominance"], best["objective"], best["CRA"]) == (-1.0, 2.0, 95.0, 95)
    assert [(p["multiplier"], p["dominance"]) for p in best["tried"]] == [(-5.0, 0.0), (-5.0, 2.0), (-1.0, 0.0), (-1.0, 2.0)]


def test_metrics_for_user_kinds_and_a_kind_with_one_value():
    """Any kinds: IRA is the target's kind, CRA the mean over every other kind; a one-value kind's IRA is on the prompts without it."""
    cs = ConceptSet.from_rows([
        {"prompt": "a dog by monet", "artist": "monet", "object": "dog", "nudity": ""},
        {"prompt": "a cat by monet", "artist": "monet", "object": "cat", "nudity": ""},
        {"prompt": "a dog by klimt", "artist": "klimt", "object": "dog", "nudity": "yes"},
        {"prompt": "a nude", "artist": "", "object": "", "nudity": "yes"},
    ], "user set")
    answers = AnswerSet(cs, (0,))
    truth = [dict(t) for t in answers.truth()]
    labels = [{k: t[k] for k in ("artist", "object", "nudity")} for t in truth]
    labels[0]["artist"] = "klimt"  # monet erased on one of its two images
    labels[2]["object"] = "cat"  # a kept object changed
    m = unlearning_metrics("artist:monet", answers, labels)
    assert m["UA"] == 50.0 and m["IRA"] == 100.0  # klimt's image keeps its artist; the unlabelled 'a nude' counts in no artist metric
    # CRA: object on 3 labelled images (2 right) and nudity on every image (a one-value kind: 4 right), averaged over the kinds
    assert m["CRA"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    labels[3]["nudity"] = ""  # the nude is no longer judged nude
    n = unlearning_metrics("nudity:yes", answers, labels)
    assert n["UA"] == 50.0 and n["IRA"] == 100.0  # IRA: the prompts without nudity are judged 'none'
    with pytest.raises(Exception, match="no image of 'artist:dali'"):
        unlearning_metrics("artist:dali", answers, labels)


@pytest.mark.parametrize("width", [256, 1024, 20480])
def test_saeuron_paper_grid_selects_one_two_or_three_features_a_step(width):
    from saeuron.concepts import select_features
    from saeuron.evaluate import PAPER_MULTIPLIERS, paper_grid

    grid = paper_grid(width)
    scores = np.random.default_rng(width).random((4, width))
    assert [[len(ids) for ids in select_features(scores, p)] for p in grid["percentile"]] == [[1] * 4, [2] * 4, [3] * 4]
    assert grid["multiplier"] == PAPER_MULTIPLIERS == (-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3)) * [1.0, 2.0, 0.5]
    b = rng.normal(size=(20000, 3)) * [2.0, 1.0, 0.5] + [1.0, 0.0, 0.0]
    expected = 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0  # |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.1)
