"""minicanvas: the shipped styles x objects world, its text-to-image model and classifier."""

from .world import OBJECTS, STYLE_NAMES, STYLES, all_prompts, object_prompt, render, render_batch, style_prompt

__all__ = ["OBJECTS", "STYLES", "STYLE_NAMES", "all_prompts", "object_prompt", "render", "render_batch", "style_prompt"]
