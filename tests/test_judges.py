"""Judges: the minicanvas classifier and zero-shot CLIP (a tiny random CLIP built here), behind one interface."""

import json

import pytest
import torch

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


CONCEPTS = {"artist": ["monet", "klimt", "dali"], "nudity": ["yes"]}


def test_clip_judge_labels_every_kind_deterministically(clip_dir):
    judge = load_judge(f"clip:{clip_dir}", CONCEPTS, {"artist": "a painting by {value}"})
    assert judge.kinds == ("artist", "nudity") and judge.values("nudity") == ("yes", NONE)
    images = torch.rand(5, 3, 48, 40, generator=torch.Generator().manual_seed(1))  # any size: resized and cropped as CLIP's processor does
    labels = judge.label(images)
    assert len(labels) == 5 and all(lab["artist"] in CONCEPTS["artist"] and lab["nudity"] in ("yes", NONE) for lab in labels)
    assert judge.label(images) == labels
    judge.batch_size = 2
    assert judge.label(images) == labels  # batching does not change a label
    assert judge.features(images).shape == (5, 16)


def test_clip_judge_picks_the_value_whose_text_matches_the_image(clip_dir):
    judge = ClipJudge(str(clip_dir), {"artist": ["monet", "klimt"]})
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    judge._text["artist"] = judge.features(images)  # make "monet" the first image's embedding and "klimt" the second's
    assert [lab["artist"] for lab in judge.label(images)] == ["monet", "klimt"]
    assert [lab["artist"] for lab in judge.label(images.flip(0))] == ["klimt", "monet"]


def test_preprocessing_matches_the_image_processor(clip_dir):
    """The torch preprocessing on the judge's device gives the pixel values CLIPImageProcessor gives (up to resampling)."""
    judge = ClipJudge(str(clip_dir), {"artist": ["monet", "klimt"]})
    images = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 255).round() / 255  # the processor works in uint8
    ours = judge._preprocess(images)
    theirs = judge.processor(images=list(images.numpy()), do_rescale=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec, concepts, templates, message", [
    ("clip:/no/such/folder", CONCEPTS, None, "cannot load the CLIP judge '/no/such/folder'"),
    ("vit:foo", CONCEPTS, None, "unknown judge 'vit:foo'"),
    ("clip:", CONCEPTS, None, "unknown judge 'clip:'"),
    ("CLIP", {}, None, "unknown judge"),
    ("CLIPDIR", {}, None, "needs concepts"),
    ("CLIPDIR", CONCEPTS, {"artist": "a painting"}, "has no {value}"),
    ("CLIPDIR", CONCEPTS, {"style": "a {value} image"}, "unknown kinds \\['style'\\]"),
    ("minicanvas", None, {"style": "{value}"}, "for a CLIP judge"),
])
def test_bad_judges_are_one_clear_error(clip_dir, tmp_path, spec, concepts, templates, message):
    spec = spec.replace("CLIPDIR", f"clip:{clip_dir}")
    with pytest.raises(UserError, match=message) as err:
        load_judge(spec, concepts, templates)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="cannot load the CLIP judge"):
        load_judge(f"clip:{tmp_path}", CONCEPTS)


def test_parse_templates():
    assert parse_templates(["artist=a painting by {value}", " nudity = a {value} photo "]) == {
        "artist": "a painting by {value}", "nudity": "a {value} photo"}
    for bad in ("artist", "=x {value}", "artist=no value"):
        with pytest.raises(UserError):
            parse_templates([bad])


def test_minicanvas_judge_is_the_classifier(minicanvas_pipe):
    from saeuron.minicanvas.classifier import classify
    from saeuron.pipelines import SamplerConfig, sample

    images = sample(minicanvas_pipe, ["a star in neon style", "a ring in ocean style"], [0, 1], SamplerConfig(steps=10))
    judge = load_judge("minicanvas")
    assert isinstance(judge, MinicanvasJudge) and judge.kinds == ("style", "object")
    assert judge.label(images) == [{"style": lab.style, "object": lab.object} for lab in classify(images)]
    assert judge.features(images).shape[0] == 2 and "neon" in judge.values("style")
