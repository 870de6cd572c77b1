"""Load the models to evaluate: ``[label=]path_or_hub_id`` specs -> (label, model, tokenizer).

Any causal LM that ``AutoModelForCausalLM`` can load works: stock checkpoints, wavepos
checkpoints (the plugin registers their types on ``import hf_wavepos``; without the plugin
``trust_remote_code=True`` uses the code saved with them), local folders or Hub ids.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hf_wavepos.sources import check_local_source, loading_errors

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"label=path"`` -> (label, path); a bare ``"path"`` is labelled by its last path part."""
    label, sep, path = spec.partition("=")
    if sep and label and path:
        return label, path
    return Path(spec.rstrip("/")).name or spec, spec


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """Load one model and its tokenizer for evaluation (in eval mode, on ``device``).

    Args:
        spec: ``[label=]path_or_hub_id``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: allow the checkpoint's own modelling code (wavepos checkpoints
            loaded without the plugin, other custom models).
        attn_implementation: e.g. ``"eager"`` (wavepos: reference backend) or ``"sdpa"``.

    Returns:
        (label, model, tokenizer).

    Raises:
        ValueError: unknown dtype, or the model or tokenizer cannot be loaded (the message
            names the spec and the underlying error).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_wavepos.models.registry  # noqa: F401  (registers the wavepos model types with the Auto classes)

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    label, path = parse_model_spec(spec)
    try:
        check_local_source(path)
    except FileNotFoundError as err:
        raise ValueError(f"{err} Give a saved model folder or a Hub model id.") from None
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (*loading_errors(), ValueError, KeyError) as err:
        raise ValueError(f"could not load model {path!r}: {type(err).__name__}: {err}") from err
    model.to(resolve_device(device)).eval()
    return label, model, tokenizer
