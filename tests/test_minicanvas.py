import numpy as np
import pytest
import torch

from saeuron.errors import UserError
from saeuron.minicanvas.model import build_tokenizer, vocabulary
from saeuron.minicanvas.world import OBJECTS, STYLE_NAMES, all_prompts, check_concept, render, render_batch


def test_world_covers_ten_styles_and_ten_objects():
    assert len(STYLE_NAMES) >= 10 and len(OBJECTS) >= 10
    assert len(set(STYLE_NAMES)) == len(STYLE_NAMES) and len(set(OBJECTS)) == len(OBJECTS)
    rows = all_prompts()
    assert len(rows) == len(STYLE_NAMES) * len(OBJECTS) + len(OBJECTS)
    assert rows[0] == {"prompt": f"a {OBJECTS[0]} in {STYLE_NAMES[0]} style", "style": STYLE_NAMES[0], "object": OBJECTS[0]}


def test_render_is_deterministic_per_seed_and_varies_across_seeds():
    for style in STYLE_NAMES:
        for obj in OBJECTS:
            a = render(style, obj, 3)
            assert a.shape == (32, 32, 3) and a.dtype == np.float32
            assert 0 <= a.min() and a.max() <= 1
            assert np.array_equal(a, render(style, obj, 3))
    assert not np.array_equal(render("neon", "star", 0), render("neon", "star", 1))


def test_object_coverage_marks_the_object_pixels():
    from saeuron.minicanvas.world import render_with_mask

    for style in STYLE_NAMES:
        img, cov = render_with_mask(style, "square", 5)
        assert np.array_equal(img, render(style, "square", 5)) and cov.shape == (32, 32)
        assert 0 <= cov.min() and cov.max() == 1 and 0.05 < cov.mean() < 0.4  # an object, not the whole image
        # the object is a different colour than the background around it
        inside, outside = img[cov == 1].mean(0), img[cov == 0].mean(0)
        assert np.abs(inside - outside).max() > 0.05


def test_render_rejects_unknown_concepts():
    with pytest.raises(ValueError, match="unknown style 'cubism'"):
        render("cubism", "star", 0)
    with pytest.raises(ValueError, match="unknown object 'dog'.*circle"):
        check_concept("object", "dog")


def test_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt = f"a {OBJECTS[3]} in {STYLE_NAMES[4]} style"
    a = tok(prompt, padding="max_length", max_length=tok.model_max_length).input_ids
    b = loaded(prompt, padding="max_length", max_length=loaded.model_max_length).input_ids
    assert a == b and len(a) == tok.model_max_length
    assert loaded.decode(b, skip_special_tokens=True) == prompt
    assert set(vocabulary()) == set(loaded.get_vocab())


def test_classifier_is_accurate_on_fresh_renders():
    from saeuron.minicanvas.classifier import classify

    labels = [(s, o) for s in STYLE_NAMES for o in OBJECTS for _ in range(2)]
    seeds = [k for _ in STYLE_NAMES for _ in OBJECTS for k in range(2)]  # training used seeds >= 2,000,000
    images = torch.from_numpy(render_batch(labels, seeds))
    predicted = classify(images)
    style_acc = np.mean([p.style == s for p, (s, _) in zip(predicted, labels)])
    object_acc = np.mean([p.object == o for p, (_, o) in zip(predicted, labels)])
    assert style_acc >= 0.99 and object_acc >= 0.99, (style_acc, object_acc)


def test_classifier_rejects_wrong_image_size():
    from saeuron.minicanvas.classifier import classify

    with pytest.raises(UserError, match="32 x 32"):
        classify(torch.zeros(1, 3, 64, 64))
