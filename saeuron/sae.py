"""Open a trained SAE, from sae-lens folders or EleutherAI-sparsify / SAeUron checkpoints, as a sae-lens SAE.

Either way the result has the same `encode(x) -> latents` and `decode(latents) -> x_hat`.
A sparsify checkpoint (`cfg.json` + `sae.safetensors` with `encoder.weight` (d_sae, d_in),
`encoder.bias`, `W_dec` (d_sae, d_in), `b_dec`) becomes a sae-lens TopK SAE:
sparsify's `topk(relu(encoder(x - b_dec)))` and `latents @ W_dec + b_dec` are exactly
sae-lens' TopK encode/decode without decoder-norm rescaling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError, read_json

SAE_LENS_FILES = ("cfg.json", "sae_weights.safetensors")
SPARSIFY_FILES = ("cfg.json", "sae.safetensors")


def _has(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() for n in names)


def _is_sae_folder(folder: Path) -> bool:
    return _has(folder, SAE_LENS_FILES) or _has(folder, SPARSIFY_FILES)


def find_sae_folder(path: str | Path, hookpoint: str | None = None) -> Path:
    """The folder holding the SAE: `path` itself, or its per-hookpoint subfolder (sparsify saves one per hookpoint)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"SAE folder {str(path)!r} not found")
    if p.is_file():
        p = p.parent  # a path to cfg.json or the weights
    if _is_sae_folder(p):
        return p
    subs = sorted(d for d in p.iterdir() if d.is_dir() and _is_sae_folder(d)) if p.is_dir() else []
    if hookpoint is not None:
        for d in subs:
            # SAeUron names its folders after the module path, sometimes prefixed with "unet."
            if d.name in (hookpoint, f"unet.{hookpoint}") or d.name.removeprefix("unet.") == hookpoint:
                return d
    if len(subs) == 1 and hookpoint is None:
        return subs[0]
    if subs:
        names = ", ".join(d.name for d in subs)
        wanted = f"no SAE for hookpoint {hookpoint!r}" if hookpoint else "several SAEs"
        raise UserError(f"{str(path)!r} holds {wanted}; its SAEs are: {names}")
    raise UserError(
        f"{str(path)!r} is not an SAE folder: expected sae-lens files ({' + '.join(SAE_LENS_FILES)}) "
        f"or a sparsify/SAeUron checkpoint ({' + '.join(SPARSIFY_FILES)})"
    )


def _read_cfg(folder: Path) -> dict[str, Any]:
    return read_json(folder / "cfg.json", "SAE config")


def _load_sparsify(folder: Path, device: str):
    """A sparsify / SAeUron TopK checkpoint as a sae-lens TopKSAE with the same weights."""
    from safetensors.torch import load_file
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = _read_cfg(folder)
    try:
        state = load_file(str(folder / "sae.safetensors"), device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read {folder / 'sae.safetensors'}: {err}") from None
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec") if k not in state]
    if missing:
        raise UserError(f"{folder / 'sae.safetensors'} lacks {', '.join(missing)}; keys found: {', '.join(sorted(state))}")
    if "W_skip" in state or cfg.get("skip_connection") or cfg.get("transcode"):
        raise UserError(f"{folder} is a sparsify transcoder / skip-connection SAE, which is not supported; give a plain TopK SAE")
    enc_w = state["encoder.weight"].float()  # (d_sae, d_in)
    d_sae, d_in = enc_w.shape
    if state["W_dec"].shape != (d_sae, d_in):
        raise UserError(f"{folder}: W_dec has shape {tuple(state['W_dec'].shape)}, expected {(d_sae, d_in)} to match encoder.weight")
    if cfg.get("d_in") not in (None, d_in):
        raise UserError(f"{folder}: cfg.json says d_in={cfg['d_in']} but the weights have width {d_in}")
    k = cfg.get("k")
    if not isinstance(k, int) or not 1 <= k <= d_sae:
        raise UserError(f"{folder / 'cfg.json'}: k={k!r} is not an integer between 1 and {d_sae}")
    b_dec = state.get("b_dec", torch.zeros(d_in)).float()
    sae_cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=False, apply_b_dec_to_input=True, dtype="float32", device="cpu")
    sae = TopKSAE(sae_cfg)
    sae.load_state_dict({"W_enc": enc_w.T.contiguous(), "b_enc": state["encoder.bias"].float(), "W_dec": state["W_dec"].float(), "b_dec": b_dec})
    return sae.to(device)


def load_sae(path: str | Path, expected_width: int | None = None, hookpoint: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None):
    """A sae-lens SAE from a sae-lens folder or a sparsify/SAeUron checkpoint, on `device` in `dtype` (None: as saved);
    checks its width against `expected_width`."""
    folder = find_sae_folder(path, hookpoint)
    if _has(folder, SAE_LENS_FILES):
        from sae_lens import SAE

        try:
            sae = SAE.load_from_disk(folder, device=str(device))
        except Exception as err:  # truncated safetensors, a cfg.json of another library: one line naming the folder
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise UserError(f"cannot load the sae-lens SAE in {str(folder)!r} ({type(err).__name__}: {first[:200]})") from None
    else:
        sae = _load_sparsify(folder, device)
    if dtype is not None:
        sae = sae.to(dtype=dtype)
    sae.eval()
    if expected_width is not None and sae.cfg.d_in != expected_width:
        where = f"hookpoint {hookpoint!r}" if hookpoint else "the block"
        raise UserError(f"SAE in {str(folder)!r} has input width {sae.cfg.d_in}, but {where} has width {expected_width}; give an SAE trained on {where}")
    return sae
