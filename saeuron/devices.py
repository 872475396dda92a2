"""Where models run: `--device auto|cpu|cuda|cuda:N|mps` and `--dtype float32|float16|bfloat16`, checked once."""

from __future__ import annotations

import re

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(text: str | torch.device | None = "auto") -> torch.device:
    """The torch device named (auto: CUDA when present, else the CPU); one clear error when it is not here."""
    if isinstance(text, torch.device):
        return text
    name = (text or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError("--device mps: no Apple GPU (MPS) is available on this machine; use --device auto or cpu")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise UserError(f"unknown device {text!r}; give {DEVICE_FORMS}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}); use --device auto or cpu")
    index = int(m[1] or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def resolve_dtype(text: str | torch.dtype | None = "float32") -> torch.dtype:
    """The torch dtype named (float32, float16 or bfloat16)."""
    if isinstance(text, torch.dtype):
        if text not in DTYPES.values():
            raise UserError(f"unsupported dtype {text}; give {', '.join(DTYPES)}")
        return text
    name = (text or "float32").strip().lower()
    if name not in DTYPES:
        raise UserError(f"unknown dtype {text!r}; give {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """'float16' for torch.float16 (what configs record)."""
    return str(dtype).removeprefix("torch.")
