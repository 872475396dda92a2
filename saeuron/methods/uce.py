"""UCE (Gandikota et al., WACV 2024, arXiv 2308.14761): a closed-form edit of every cross-attention key and value projection.

    W* = (lambda W + s_e sum_i v*_i c_i^T + s_p sum_j W c_j c_j^T) (lambda I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1

c_i: the text embeddings of the erased prompts from the concept's first token on; v*_i = W g_i,
the guide prompt's embeddings from where its stand-in begins (UnlearnCanvas's "replace"
technique); c_j: every embedding of every prompt that does not hold the target (the preserve set).
"""

from __future__ import annotations

import torch

from ..pipelines import prompt_conditions
from .base import EditedWeightsMethod, FitContext, Hyper, anchor_value, guide_row, save_tensors, target_rows
from ..concept_set import Concept


def _token_ids(pipe, text: str) -> list[int]:
    """The tokens of a word or phrase, without special tokens."""
    return pipe.tokenizer(text, add_special_tokens=False).input_ids


def _start(pipe, prompt: str, phrase: str) -> int:
    """Position of the phrase's first token in the prompt's (truncated) token sequence, else of its end-of-text token."""
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    sub = _token_ids(pipe, phrase) if phrase else []
    for i in range(len(ids) - len(sub) + 1):
        if sub and ids[i : i + len(sub)] == sub:
            return i
    return len(ids) - 1


class UCE(EditedWeightsMethod):
    name = "uce"
    summary = "UCE (closed-form edit of cross-attention keys and values, with preserved concepts)"
    defaults = {
        "erase_scale": Hyper(1.0, 1.0, "the repository default; UnlearnCanvas's 0.05 (styles) / 0.01 (objects) were tuned against "
                                       "~1,000 preserved SD prompts"),
        "preserve_scale": Hyper(0.1, 0.1, "max(0.1, 1/N) as UnlearnCanvas, N ~ 100 prompts here"),
        "lam": Hyper(0.5, 0.5),
    }

    def fit(self, ctx: FitContext) -> dict:
        pipe, p = ctx.pipe, ctx.params
        cs = ctx.concept_set
        erased, guides = [], []
        with torch.no_grad():
            for t in ctx.targets:
                value = Concept.parse(t).value
                for row in target_rows(t, cs):
                    g = guide_row(row, t, cs)
                    e = prompt_conditions(pipe, [row["prompt"]])["encoder_hidden_states"][0]
                    ge = prompt_conditions(pipe, [g["prompt"]])["encoder_hidden_states"][0]
                    i0 = _start(pipe, row["prompt"], value)
                    j0 = _start(pipe, g["prompt"], anchor_value(t, cs) if g["prompt"] else "")
                    n = len(e) - i0
                    rows = torch.arange(n)
                    erased.append(e[i0 + rows])
                    guides.append(ge[(j0 + rows).clamp(max=len(ge) - 1)])
            kept = [r["prompt"] for r in cs.rows if not set(cs.labels(r)) & set(ctx.targets)]
            preserved = prompt_conditions(pipe, kept)["encoder_hidden_states"].flatten(0, 1) if kept else None
        c = torch.cat(erased).double()
        g = torch.cat(guides).double()
        s_e, s_p, lam = float(p["erase_scale"]), float(p["preserve_scale"]), float(p["lam"])
        new = {}
        with torch.no_grad():
            for name, module in pipe.unet.named_modules():
                if not name.endswith((".attn2.to_k", ".attn2.to_v")):
                    continue
                w = module.weight.double()
                left = lam * w + s_e * (g @ w.T).T @ c  # (g @ w.T): the guide's keys / values v*
                right = lam * torch.eye(w.shape[1], dtype=w.dtype, device=w.device) + s_e * c.T @ c
                if preserved is not None:
                    cp = preserved.double()
                    left = left + s_p * (w @ cp.T) @ cp
                    right = right + s_p * cp.T @ cp
                new[name + ".weight"] = torch.linalg.solve(right.T, left.T).T  # left @ right^-1 (right is symmetric)
        return {**save_tensors(new, ctx.out), "erased_rows": len(c), "preserved_rows": 0 if preserved is None else len(preserved)}
