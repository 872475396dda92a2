"""Labelled prompt sets: files in every format, labels kept by the store, scores for any kind, clear errors."""

import json

import numpy as np
import pytest

from saeuron.concept_set import Concept, ConceptSet, parse_concepts
from saeuron.errors import UserError


def test_csv_jsonl_and_txt_files(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,artist,object\na dog by monet,monet,dog\na cat,,cat\n\n")
    cs = ConceptSet.from_file(csv)
    assert cs.kinds == ("artist", "object") and cs.prompts == ["a dog by monet", "a cat"]
    assert cs.concepts() == ["artist:monet", "object:cat", "object:dog"]
    assert cs.labels(cs.rows[1]) == ["object:cat"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a nude", "nudity": True}) + "\n\n" + json.dumps({"prompt": "a dog", "nudity": None, "object": "dog"}) + "\n")
    cs = ConceptSet.from_file(jsonl)
    assert cs.kinds == ("nudity", "object") and cs.values("nudity") == ["yes"] and cs.rows[1] == {"prompt": "a dog", "nudity": "", "object": "dog"}
    txt = tmp_path / "p.txt"
    txt.write_text("a dog\n\n  a cat  \n")
    cs = ConceptSet.from_file(txt)
    assert cs.kinds == () and cs.prompts == ["a dog", "a cat"] and cs.concepts() == []
    assert ConceptSet.from_file(csv).digest() == ConceptSet.from_file(csv).digest() != cs.digest()


def test_every_shipped_example_reads(request):
    from pathlib import Path

    root = Path(request.config.rootdir) / "examples"
    sets = {p.suffix: ConceptSet.from_file(p) for p in root.glob("sd_prompts.*")}
    assert set(sets) == {".csv", ".jsonl", ".txt"}
    assert "artist:van gogh" in sets[".csv"].concepts() and sets[".jsonl"].values("nudity") == ["yes"]


@pytest.mark.parametrize("name, text, message", [
    ("a.csv", "text,artist\na dog,monet\n", "no 'prompt' column"),
    ("a.csv", "prompt,bad kind\na dog,x\n", "bad concept kind 'bad kind'"),
    ("a.csv", "prompt,text\na dog,x\n", "bad concept kind 'text'"),
    ("a.csv", "prompt,artist\na dog,\"monet, claude\"\n", "contains ',' or ':'"),
    ("a.jsonl", "{\"prompt\": \"a dog\"}\nnot json\n", "line 2 .* is not JSON"),
    ("a.jsonl", "[1, 2]\n", "not a JSON object with a 'prompt' field"),
    ("a.jsonl", "{\"prompt\": \"\"}\n", "has no text"),
    ("a.jsonl", "{\"prompt\": \"a\", \"artist\": [\"x\"]}\n", "is a list; give text"),
    ("a.txt", "\n\n", "is empty"),
])
def test_bad_prompt_files_are_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        ConceptSet.from_file(path)


def test_binary_missing_and_folder_prompt_files(tmp_path):
    (tmp_path / "bytes.txt").write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="not UTF-8|not a text file"):
        ConceptSet.from_file(tmp_path / "bytes.txt")
    with pytest.raises(UserError, match="is a folder"):
        ConceptSet.from_file(tmp_path)
    with pytest.raises(UserError, match="not found"):
        ConceptSet.from_file(tmp_path / "none.csv")


def test_concepts_parse_and_check():
    assert Concept.parse(" artist : van gogh ") == Concept("artist", "van gogh") and str(Concept("a", "b")) == "a:b"
    assert parse_concepts("style:neon, object:star") == ["style:neon", "object:star"]
    for bad in ("neon", "style:", ":neon"):
        with pytest.raises(UserError, match="KIND:VALUE"):
            Concept.parse(bad)
    world = ConceptSet.minicanvas()
    assert world.check("style:neon") == Concept("style", "neon")
    with pytest.raises(UserError, match="unknown concept kind 'artist'.*style, object"):
        world.check("artist:monet")
    with pytest.raises(UserError, match="unknown style 'cubism'.*neon"):
        world.check("style:cubism")


def test_a_labelled_store_scores_every_kind_and_a_one_value_kind_against_the_rest(tmp_path, random_minicanvas_pipe, capsys):
    """User kinds survive cache -> store -> concepts -> scores; a one-value kind is scored against the prompts without it."""
    import torch

    from saeuron.cache import CacheConfig, cache_activations, open_store
    from saeuron.cli import main
    from saeuron.concepts import score_cache

    rows = [{"prompt": "a star in neon style", "glow": "yes", "shape": "star"},
            {"prompt": "a ring in neon style", "glow": "yes", "shape": "ring"},
            {"prompt": "a star in noir style", "glow": "", "shape": "star"},
            {"prompt": "a ring in noir style", "glow": "", "shape": "ring"}]
    cs = ConceptSet.from_rows(rows, "glow set")
    hp = "up_blocks.1.attentions.2"
    store = tmp_path / "c.h5"
    cache_activations(random_minicanvas_pipe, cs, store, CacheConfig(hookpoints=(hp,), seeds=(0,), steps=2, batch_size=4), progress=False)
    info = open_store(store)
    assert info.concept_set.kinds == ("glow", "shape") and info.prompts == list(cs.rows)
    assert main(["concepts", "--store", str(store), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kinds"] == {"glow": ["yes"], "shape": ["ring", "star"]}

    class Identity:  # an "SAE" whose latents are the activations themselves: the score arithmetic is checked by hand
        cfg = type("cfg", (), {"d_in": info.widths[hp], "d_sae": info.widths[hp]})()
        W_dec = torch.zeros(1)

        def encode(self, x):
            return x.relu()

    scores = score_cache(store, hp, Identity())
    assert scores.concepts == ["glow:yes", "shape:ring", "shape:star"] and scores.kinds == ["glow", "shape"]
    g = scores.index("glow:yes")
    # mu_o of the one-value kind is the mean over the two noir images (the prompts without glow:yes)
    star, ring = scores.index("shape:star"), scores.index("shape:ring")
    noir_mean = (scores.mean_acts[star] * 2 + scores.mean_acts[ring] * 2 - scores.mean_acts[g] * 2) / 2
    np.testing.assert_allclose(scores.other_acts[g], noir_mean, rtol=1e-4, atol=1e-6)
    assert np.abs(scores.scores[g]).max() > 0
    with pytest.raises(UserError, match="unknown concept kind 'style'.*glow, shape"):
        scores.index("style:neon")

    # per-context scores: the shapes within the glowing prompts alone (one image each), from the same image-step means
    from saeuron.concepts import image_step_means

    means = image_step_means(store, hp, Identity())
    glowing = means.context_scores("glow")["glow:yes"]
    assert list(means.context_scores("glow")) == ["glow:yes"] and glowing.concepts == ["shape:ring", "shape:star"]
    assert glowing.n_images.tolist() == [1, 1]
    star_neon = np.stack([means.means[(means.keys[:, 0] == 0) & (means.keys[:, 2] == s)][0] for s in means.steps])
    np.testing.assert_allclose(glowing.mean_acts[glowing.index("shape:star")], star_neon, rtol=1e-5)
    np.testing.assert_allclose(glowing.other_acts[glowing.index("shape:star")], glowing.mean_acts[glowing.index("shape:ring")], rtol=1e-5)
    np.testing.assert_array_equal(means.scores().scores, scores.scores)
    with pytest.raises(UserError, match="kind 'color'"):
        means.context_scores("color")
