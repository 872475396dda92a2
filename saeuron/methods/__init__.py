"""The field's unlearning methods behind one interface (`base.Method`), one module each.

    saeuron  SAeUron: SAE feature ablation at inference (sae_ablation.py)
    esd-x    ESD on cross-attention, esd-u on everything else (esd.py)
    uce      UCE: closed-form cross-attention edit (uce.py)
    ca       Concept Ablation, model-based (ca.py)
    spm      SPM: rank-1 adapters through peft, facilitated transport (spm.py)
    unguide  UnGuide: rank-1 LoRA on cross-attention k, v, UnGuidance at inference (unguide.py)
    sa       Selective Amnesia: surrogate forget set, generative replay, EWC (sa.py)
"""

from __future__ import annotations

from .base import FitContext, Hyper, Method, SampleHooks


def methods() -> dict[str, Method]:
    """Every method by its command-line name."""
    from .ca import CA
    from .esd import ESD
    from .sa import SelectiveAmnesia
    from .sae_ablation import SAeUron
    from .spm import SPM
    from .uce import UCE
    from .unguide import UnGuide

    return {m.name: m for m in (SAeUron(), ESD("esd-x", "xattn"), ESD("esd-u", "noxattn"), UCE(), CA(), SPM(), UnGuide(), SelectiveAmnesia())}


def get_method(name: str) -> Method:
    """The method of that name, or one clear error listing the valid ones."""
    from ..errors import UserError

    table = methods()
    if name not in table:
        raise UserError(f"unknown method {name!r}; valid: {', '.join(table)}")
    return table[name]


__all__ = ["FitContext", "Hyper", "Method", "SampleHooks", "get_method", "methods"]
