"""Judges: the minicanvas classifier and zero-shot CLIP (a tiny random CLIP built here), behind one interface."""

import json

import pytest
import torch
import torch.nn.functional as F

from saeuron.errors import UserError
from saeuron.judges import NONE, ClipJudge, MinicanvasJudge, load_judge, parse_templates


def tiny_clip(folder):
    """A random-weight CLIPModel with its tokenizer and image processor, saved to `folder` (no downloads)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from tiny_models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(folder / "_tok")
    text = dict(vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A complete model folder that is not a CLIP (transformers would load it as a random CLIP)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)).save_pretrained(folder)
    return folder


CONCEPTS = {"artist": ["monet", "klimt", "dali"], "nudity": ["yes"]}


def smooth_images(n, h, w, seed):
    """Low-frequency images in [0, 1] (resampling differences between libraries stay small on them)."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(coarse, size=(h, w), mode="bilinear") * 255).round() / 255


def test_clip_judge_labels_every_kind_deterministically(clip_dir):
    judge = load_judge(f"clip:{clip_dir}", CONCEPTS, {"artist": "a painting by {value}"})
    assert judge.name == f"clip:{clip_dir}" and judge.kinds == ("artist", "nudity")
    assert judge.values("artist") == ("monet", "klimt", "dali") and judge.values("nudity") == ("yes", NONE)
    images = torch.rand(5, 3, 48, 40, generator=torch.Generator().manual_seed(1))  # any size: resized and cropped as CLIP's processor does
    labels = judge.label(images)
    assert len(labels) == 5 and all(set(lab) == {"artist", "nudity"} for lab in labels)
    assert all(lab["artist"] in CONCEPTS["artist"] and lab["nudity"] in ("yes", NONE) for lab in labels)
    assert judge.label(images) == labels
    judge.batch_size = 2
    assert judge.label(images) == labels  # batching does not change a label
    assert judge.label(images[:0]) == []
    feats = judge.features(images)
    assert feats.shape == (5, 16) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5))


def test_clip_judge_embeds_each_value_from_its_template(clip_dir):
    """Text classes are the kind's template filled with each value, and `none_prompt` for a one-value kind's NONE."""
    judge = ClipJudge(str(clip_dir), CONCEPTS, {"artist": "a painting by {value}"}, none_prompt="a plain picture")
    torch.testing.assert_close(judge._text["artist"], judge._embed_text(["a painting by monet", "a painting by klimt", "a painting by dali"]))
    torch.testing.assert_close(judge._text["nudity"], judge._embed_text(["an image of yes", "a plain picture"]))


def test_clip_judge_picks_the_value_whose_text_matches_the_image(clip_dir):
    judge = ClipJudge(str(clip_dir), {"artist": ["monet", "klimt"], "nudity": ["yes"]})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    feats = judge.features(images)
    judge._text["artist"] = feats  # make "monet" the first image's embedding and "klimt" the second's
    judge._text["nudity"] = feats.flip(0)  # and "yes" the second's, NONE the first's
    assert judge.label(images) == [{"artist": "monet", "nudity": NONE}, {"artist": "klimt", "nudity": "yes"}]
    assert judge.label(images.flip(0)) == [{"artist": "klimt", "nudity": "yes"}, {"artist": "monet", "nudity": NONE}]


def test_clip_judge_in_another_dtype(clip_dir):
    judge = ClipJudge(str(clip_dir), CONCEPTS, dtype="bfloat16")
    assert judge.model.dtype == torch.bfloat16
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert judge.features(images).dtype == torch.float32 and len(judge.label(images)) == 3


@pytest.mark.parametrize("h, w", [(32, 32), (48, 40), (40, 72), (20, 24)])
def test_preprocessing_matches_the_image_processor(clip_dir, h, w):
    """The torch preprocessing gives the pixel values of CLIPImageProcessor (resize, crop, normalise), up to resampling."""
    judge = ClipJudge(str(clip_dir), {"artist": ["monet", "klimt"]})
    images = smooth_images(2, h, w, seed=3)
    ours = judge._preprocess(images)
    theirs = judge.processor(images=list((images * 255).round().to(torch.uint8).numpy()), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, theirs, atol=1e-5 if (h, w) == (32, 32) else 0.03, rtol=0)


def one_line_error(call, *names):
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in names), message
    return message


@pytest.mark.parametrize("spec, concepts, templates, names", [
    ("clip:/no/such/folder", CONCEPTS, None, ["cannot load the CLIP judge '/no/such/folder'", "no such folder", "CLIPModel"]),
    ("vit:foo", CONCEPTS, None, ["unknown judge 'vit:foo'", "minicanvas or clip:MODEL"]),
    ("clip:", CONCEPTS, None, ["unknown judge 'clip:'"]),
    ("CLIP", {}, None, ["unknown judge 'CLIP'"]),
    ("CLIPDIR", {}, None, ["needs concepts"]),
    ("CLIPDIR", {"artist": ["", ""]}, None, ["needs concepts"]),
    ("CLIPDIR", CONCEPTS, {"artist": "a painting"}, ["'a painting'", "'artist'", "{value}"]),
    ("CLIPDIR", CONCEPTS, {"artist": "a {style} painting by {value}"}, ["'a {style} painting by {value}'"]),
    ("CLIPDIR", CONCEPTS, {"style": "a {value} image"}, ["unknown kinds ['style']"]),
    ("minicanvas", None, {"style": "{value}"}, ["for a CLIP judge"]),
])
def test_bad_judges_are_one_clear_error(clip_dir, spec, concepts, templates, names):
    one_line_error(lambda: load_judge(spec.replace("CLIPDIR", f"clip:{clip_dir}"), concepts, templates), *names)


def test_a_folder_that_is_not_a_clip_is_refused(tmp_path, bert_dir, clip_dir):
    one_line_error(lambda: load_judge(f"clip:{bert_dir}", CONCEPTS), f"'{bert_dir}'", "'bert' model", "CLIPModel")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    one_line_error(lambda: load_judge(f"clip:{tmp_path}", CONCEPTS), f"'{tmp_path}'", "'bert' model")
    (tmp_path / "config.json").write_text((clip_dir / "config.json").read_text())  # a CLIP config without weights
    one_line_error(lambda: load_judge(f"clip:{tmp_path}", CONCEPTS), f"cannot load the CLIP judge '{tmp_path}' (OSError")


def test_parse_templates():
    assert parse_templates([]) == {}
    assert parse_templates(["artist=a painting by {value}", " nudity = a {value} photo "]) == {
        "artist": "a painting by {value}", "nudity": "a {value} photo"}
    for bad in ("artist", "=x {value}", "artist=no value", "artist={value} }"):
        one_line_error(lambda: parse_templates([bad]), repr(bad) if "=" not in bad or bad.startswith("=") else "artist")


def test_minicanvas_judge_is_the_classifier(minicanvas_pipe):
    from saeuron.minicanvas.classifier import classify
    from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES
    from saeuron.pipelines import SamplerConfig, sample

    prompts = ["a star in neon style", "a ring in ocean style", "a heart in lava style", "a moon in sketch style"]
    images = sample(minicanvas_pipe, prompts, [0, 1, 2, 3], SamplerConfig(steps=10))
    judge = load_judge("minicanvas")
    assert isinstance(judge, MinicanvasJudge) and judge.name == "minicanvas" and judge.kinds == ("style", "object")
    assert judge.values("style") == STYLE_NAMES and judge.values("object") == OBJECTS
    labels = judge.label(images)
    assert labels == [{"style": lab.style, "object": lab.object} for lab in classify(images)]
    assert sum(lab == {"style": p.split()[3], "object": p.split()[1]} for lab, p in zip(labels, prompts)) >= 3  # the shipped model draws them
    assert judge.features(images).shape[0] == 4
    one_line_error(lambda: judge.values("artist"), "'artist'", "style, object")
