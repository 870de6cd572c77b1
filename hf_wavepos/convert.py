"""Convert a pretrained RoPE (or GPT-2 learned-position) checkpoint into a wavepos checkpoint.

    report = convert_checkpoint("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-long", "long", train_length=256)
    print(report.describe())

``src`` is a model folder, a Hub id, a GGUF file, or a folder holding one GGUF file (``gguf_file``
names it when there are several). GGUF weights are dequantised by transformers (with the ``gguf``
package) to float32; a GGUF-loaded model refuses ``save_pretrained``, so the weights are moved into
a plain model built from the same config first. The output folder is a normal wavepos checkpoint:
safetensors weights, ``config.json`` with the ``wavepos`` section and ``auto_map``, the bundled
remote code (`hf_wavepos.models.remote`), the tokenizer and the generation config. It loads with
the plugin, or without it through ``trust_remote_code=True``.

``position="rope"`` changes no position: it saves the stock model as it is (a GGUF file becomes a
plain safetensors checkpoint, the teacher of self-distillation and the control of
``wavepos bench conversion``).

Converting changes only the attention step (`hf_wavepos.apply_wavepos`): Llama / GPT-NeoX stop
rotating q and k (the rotary module holds no weights); GPT-2 drops its learned absolute ``wpe``
table. Every other weight is kept unchanged. Right after conversion the model is far off
(perplexity in the hundreds): it needs a short recalibration (``recipes/configs/*recalibrate*``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_wavepos.config import WavePosConfig, resolve_config
from hf_wavepos.models.registry import architecture_of, supported_model_types
from hf_wavepos.sources import is_local_path, loading

KEEP_ROPE = ("rope", "keep")
CONVERSION_FILE = "wavepos_conversion.json"
GGUF_INSTALL = "pip install 'hf-wavepos[convert]'  (or: pip install gguf)"


@dataclass
class ConversionReport:
    """What `convert_checkpoint` did (also written to ``OUT/wavepos_conversion.json``).

    Attributes:
        source: ``src`` as given; ``gguf_file``: the GGUF file read (None for safetensors / bin).
        output: the folder written.
        source_model_type / model_type: e.g. ``llama`` -> ``wavepos_llama``.
        position_before / position_after: in words (e.g. ``RoPE (theta 100000)`` -> ``wavelet long ...``).
        removed: what the conversion took out (``RoPE rotation of q and k (no weights)``, ``wpe (...)``).
        parameters_before / parameters_after: parameter counts (equal unless a ``wpe`` table was dropped).
        wavepos: the ``wavepos`` section written (None for ``position="rope"``).
        notes: anything the user should know (e.g. the log-n ``train_length`` in use).
    """

    source: str
    gguf_file: str | None
    output: str
    source_model_type: str
    model_type: str
    position_before: str
    position_after: str
    removed: list[str]
    parameters_before: int
    parameters_after: int
    wavepos: dict | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The report as the lines ``wavepos convert`` prints."""
        kept = self.parameters_after
        lines = [
            f"converted {self.source}{f' ({self.gguf_file})' if self.gguf_file else ''} -> {self.output}",
            f"  model type:  {self.source_model_type} -> {self.model_type}",
            f"  positions:   {self.position_before} -> {self.position_after}",
            f"  removed:     {', '.join(self.removed) if self.removed else 'nothing'}",
            f"  parameters:  {kept:,} kept of {self.parameters_before:,}"
            + ("" if kept == self.parameters_before else f" ({self.parameters_before - kept:,} in the removed table)"),
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def position_target(position: str | dict | WavePosConfig, train_length: int | None = None) -> str | WavePosConfig:
    """The position method asked for: ``"rope"`` (keep the stock positions) or a `WavePosConfig`.

    Args:
        position: ``"rope"``/``"keep"``, a preset name (``oka2025``, ``oka2025-4k``, ``long``,
            ``alibi``, ``nope``), a ``wavepos`` dict, a dict with a ``preset`` key plus fields to
            override (``{"preset": "long", "num_scales": 8}``), or the JSON text of such a dict.
        train_length: the recalibration length in tokens: sets ``train_length`` (where log-n query
            scaling starts). None keeps the preset's value.

    Raises:
        ValueError: unknown preset or field, bad JSON, or ``train_length`` with ``"rope"``.
    """
    if isinstance(position, str) and position.strip().startswith("{"):
        try:
            position = json.loads(position)
        except json.JSONDecodeError as err:
            raise ValueError(f"--position is not valid JSON ({err.msg} at column {err.colno}): {position!r}.") from None
    if isinstance(position, str) and position in KEEP_ROPE:
        if train_length is not None:
            raise ValueError("train_length only applies to a wavepos position (log-n scaling); drop it for 'rope'.")
        return "rope"
    try:
        config = resolve_config(position)
    except (ValueError, TypeError) as err:
        raise ValueError(f"position: {err} ('rope' keeps the stock positions.)") from None
    return config.replace(train_length=train_length) if train_length is not None else config


def resolve_source(src: str | Path, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Where to load from: ``(folder_or_hub_id, gguf_file)``.

    A path ending in ``.gguf`` is split into its folder and file name; a local folder without
    ``config.json`` but with exactly one ``.gguf`` file uses that file. Anything else (a folder
    with ``config.json``, a Hub id) is returned as it is.

    Raises:
        FileNotFoundError: a ``.gguf`` path or ``gguf_file`` that does not exist, or a missing local
            path (`hf_wavepos.sources.is_local_path`: never looked up on the Hub).
        ValueError: a folder with no config.json and zero or several GGUF files (and no ``gguf_file``).
    """
    path = Path(src).expanduser()
    if path.suffix == ".gguf":
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"src is the GGUF file {path.name} but gguf_file={gguf_file!r}; give one of them.")
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist.")
        return str(path.parent), path.name
    if path.is_file():
        raise ValueError(f"SRC {str(src)!r} is a file but not a .gguf file: give the model's folder (with config.json), "
                         "a .gguf file or a Hub id.")
    if not path.is_dir():
        if is_local_path(src):
            raise FileNotFoundError(
                f"SRC {str(src)!r} is neither a local folder, nor a .gguf file, nor a Hub id that could be loaded: "
                f"the local path {path} does not exist (the Hub is not tried for a local path); check the path."
            )
        return str(src), gguf_file  # a Hub id
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"{path} has no GGUF file {gguf_file!r}; found: {sorted(p.name for p in path.glob('*.gguf'))}.")
        return str(path), gguf_file
    if (path / "config.json").is_file():
        return str(path), None
    found = sorted(p.name for p in path.glob("*.gguf"))
    if len(found) == 1:
        return str(path), found[0]
    if found:
        raise ValueError(f"{path} holds several GGUF files {found}; name one with gguf_file (--gguf-file).")
    raise ValueError(f"{path} has neither config.json nor a .gguf file: it is not a model folder.")


def require_gguf() -> None:
    """Raise ImportError naming the install command when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading a GGUF file needs the gguf package: {GGUF_INSTALL}.")


def describe_positions(config: Any) -> str:
    """The position method of a transformers config, in words (stock or wavepos)."""
    model_type = config.model_type
    if model_type.startswith("wavepos_"):
        wp = resolve_config(config.wavepos)
        if wp.method != "wavelet":
            return {"alibi": "ALiBi (standard slopes)", "nope": "NoPE (no position term)"}[wp.method]
        logn = f", log-n scaling past {wp.train_length}" if wp.log_n_scaling else ""
        return (f"wavelet ({wp.wavelet}, {wp.num_scales} scales from 2^{wp.scale_base_exponent}, "
                f"t = {wp.sign_convention}{logn})")
    if model_type == "gpt2":
        return f"learned absolute positions (wpe, {config.n_positions} positions)"
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    kind = rope.get("rope_type", "default")
    scaled = "" if kind == "default" else f", {kind} scaling x{rope.get('factor')}"
    return f"RoPE (theta {theta:g}{scaled}, {config.max_position_embeddings} positions)" if theta else "RoPE"


def _removed(model_type: str, config: Any) -> list[str]:
    if model_type == "gpt2":
        return [f"wpe: learned absolute position table ({config.n_positions} x {config.n_embd})"]
    return ["RoPE rotation of q and k (no weights; the rotary module stays unused)"]


def _check_before_loading(config: Any, position: str | WavePosConfig) -> None:
    model_type = config.model_type
    if model_type.startswith("wavepos_"):
        raise ValueError(
            f"the source is already a {model_type} checkpoint; convert the original stock checkpoint instead "
            "(or change its positions with hf_wavepos.apply_wavepos)."
        )
    if position == "rope":
        return
    try:
        arch = architecture_of(model_type)
    except ValueError:
        raise ValueError(
            f"model type {model_type!r} cannot be converted: hf_wavepos supports {', '.join(supported_model_types())}."
        ) from None
    try:
        position.check_head_dim(arch.head_dim(config))
    except ValueError as err:
        raise ValueError(f"position does not fit this model: {err}") from None


def _plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a model built from its config (a GGUF-loaded model cannot be saved)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    for name in ("quantization_config", "_pre_quantization_dtype"):
        config.__dict__.pop(name, None)
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


def _source_errors(src: str | Path) -> contextlib.AbstractContextManager[None]:
    """Turn a loading failure of ``src`` (OSError, network errors) into one ValueError naming it."""
    return loading(src, "SRC", "a local folder, nor a .gguf file, nor a Hub id")


def load_source(src: str | Path, gguf_file: str | None = None, dtype: str = "float32",
                trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any, str, str | None]:
    """Load a stock causal LM and its tokenizer from a folder, a Hub id or a GGUF file.

    Returns:
        ``(model, tokenizer, folder_or_id, gguf_file)``; a GGUF model is returned as a plain
        (saveable) model with the dequantised weights.

    Raises:
        ImportError: a GGUF source without the ``gguf`` package (names the pip command).
        FileNotFoundError / ValueError: from `resolve_source`.
        ValueError: the model or tokenizer could not be loaded (not found, offline, no network),
            naming ``src`` and the reason.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_source(src, gguf_file)
    if gguf is not None:
        require_gguf()
    kwargs = {"gguf_file": gguf} if gguf else {"trust_remote_code": trust_remote_code}
    with _source_errors(src):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    if gguf is not None:
        model = _plain_copy(model)
    return model.eval(), tokenizer, folder, gguf


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    position: str | dict | WavePosConfig,
    train_length: int | None = None,
    gguf_file: str | None = None,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ConversionReport:
    """Convert ``src`` to ``position`` and save a wavepos checkpoint (see the module docstring).

    Args:
        src: a model folder, a Hub id, a ``.gguf`` file, or a folder holding one GGUF file.
        out: the folder to write (created; must be empty unless ``overwrite``).
        position: the new position method (`position_target`): ``"rope"`` keeps the stock one.
        train_length: the recalibration length in tokens (log-n scaling starts past it).
        gguf_file: the GGUF file inside a folder ``src`` that holds several.
        dtype: float32 (default), bfloat16 or float16: the dtype of the saved weights.
        overwrite: replace the contents of a non-empty ``out``.
        trust_remote_code: allow a Hub/folder source's own modelling code (not GGUF).

    Returns:
        The `ConversionReport` (also saved as ``out/wavepos_conversion.json``).

    Raises:
        ValueError: unsupported architecture (names the supported ones), a position that does not fit
            the head size, an already converted source, a non-empty ``out``; all before any weight is read.
            Also a ``src`` that could not be loaded (naming it and the reason).
        FileNotFoundError: a missing local ``src`` (never looked up on the Hub).
        ImportError: a GGUF source without the ``gguf`` package (names the pip command).
    """
    from transformers import AutoConfig

    from hf_wavepos.models import apply_wavepos

    target = position_target(position, train_length)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r} is not allowed; allowed values: float32, bfloat16, float16.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} is not empty; choose a new folder or pass overwrite=True (--overwrite).")
    folder, gguf = resolve_source(src, gguf_file)
    if gguf is not None:
        require_gguf()
    kwargs = {"gguf_file": gguf} if gguf else {"trust_remote_code": trust_remote_code}
    with _source_errors(src):
        source_config = AutoConfig.from_pretrained(folder, **kwargs)
    _check_before_loading(source_config, target)

    model, tokenizer, _, _ = load_source(src, gguf_file, dtype, trust_remote_code)
    source_type = model.config.model_type
    before = describe_positions(model.config)
    params_before = sum(p.numel() for p in model.parameters())
    notes = []
    if target == "rope":
        removed, wavepos = [], None
        notes.append("positions unchanged: the stock model saved as safetensors")
    else:
        for name in ("attention_dropout", "attn_pdrop"):  # the wavepos backends have no attention dropout
            if float(getattr(model.config, name, 0.0) or 0.0) > 0:
                notes.append(f"{name} {getattr(model.config, name)} set to 0 (wavepos attention has no dropout)")
                setattr(model.config, name, 0.0)
        model = apply_wavepos(model, target)
        removed, wavepos = _removed(source_type, model.config), target.to_dict()
        if target.log_n_scaling and train_length is None:
            notes.append(f"log-n query scaling starts past train_length={target.train_length} (the preset's); "
                         "pass train_length (--train-length) with your recalibration length")
        notes.append("recalibrate before use: right after conversion the model predicts far worse "
                     "(see recipes/configs/*recalibrate*)")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    report = ConversionReport(
        source=str(src), gguf_file=gguf, output=str(out), source_model_type=source_type,
        model_type=model.config.model_type, position_before=before, position_after=describe_positions(model.config),
        removed=removed, parameters_before=params_before,
        parameters_after=sum(p.numel() for p in model.parameters()), wavepos=wavepos, notes=notes,
    )
    (out / CONVERSION_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
