"""The minicanvas text-to-image model: tokenizer, CLIP text encoder and a UNet laid out like SD 1.x.

The UNet works in pixel space on 32x32 RGB images. Its blocks mirror Stable Diffusion 1.x
(cross-attention down blocks, a cross-attention mid block, cross-attention up blocks with
one more layer than the down blocks), at three resolution levels instead of four, so that
`up_blocks.1.attentions.{0,1,2}` are cross-attention transformer blocks on a 16x16 grid,
as at 512 px in SD 1.x. Unlike SD, the full-resolution level (32x32) has no attention:
self-attention over 1024 tokens tripled the CPU training cost.
"""

from __future__ import annotations

from pathlib import Path

from .world import OBJECTS, STYLE_NAMES

MAX_TOKENS = 8
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
FILLER_WORDS = ("a", "in", "style")


def vocabulary() -> list[str]:
    """Every token of the minicanvas language, special tokens first."""
    return [*SPECIAL_TOKENS, *FILLER_WORDS, *STYLE_NAMES, *OBJECTS]


def build_tokenizer():
    """A word-level Hugging Face tokenizer over the minicanvas vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_TOKENS,
    )


def build_text_encoder(vocab_size: int):
    """A tiny CLIP text encoder (2 layers, width 64)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        projection_dim=64,
    )
    return CLIPTextModel(cfg)


def build_unet():
    """The UNet: SD 1.x block layout at three levels, pixel space, 32x32 RGB."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=(1, 2, 1),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
        transformer_layers_per_block=1,
    )


def build_scheduler():
    """The DDIM scheduler the model is trained and sampled with (cosine schedule, v-prediction).

    v-prediction: with the cosine schedule alpha_bar(999) is ~0, and an epsilon model's x0
    estimate at the first step is amplified noise (clipped, it stays in the image).
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=True,
        clip_sample_range=1.0,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


WEIGHTS_DIR = Path(__file__).parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
CLASSIFIER_PATH = WEIGHTS_DIR / "classifier.safetensors"
