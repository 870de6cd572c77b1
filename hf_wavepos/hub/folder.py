"""The Hub-ready folder of a wavepos checkpoint, and the checks that refuse an incomplete one.

`assemble_folder` writes exactly what would be uploaded::

    OUT/config.json                  with the ``wavepos`` section and ``auto_map``
    OUT/model.safetensors            weights (safetensors only: nothing is pickled or unpickled)
    OUT/modeling_wavepos_<arch>.py   remote code: standard library, torch and transformers only
    OUT/generation_config.json, tokenizer files
    OUT/README.md                    the model card (`hf_wavepos.hub.card.render_card`)
    OUT/eval/...                     plots and result JSON/CSV copied from an evaluation run folder
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from hf_wavepos.hub.card import check_eval_label, read_eval_run, render_card
from hf_wavepos.models.registry import is_wavepos_model_type
from hf_wavepos.sources import loading_errors

FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")
EVAL_SUFFIXES = (".json", ".csv", ".png", ".jsonl")
ALLOWED_REMOTE_IMPORTS = frozenset(sys.stdlib_module_names) | {"torch", "transformers"}


# ----------------------------------------------------------------------------- checks
def check_remote_code(path: str | Path) -> None:
    """Raise ValueError if the remote code imports anything but the stdlib, torch and transformers."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["." * node.level]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in ALLOWED_REMOTE_IMPORTS:
                raise ValueError(f"{path}: remote code imports {name!r}; only the standard library, torch and "
                                 "transformers are allowed.")


def check_folder(folder: str | Path) -> dict[str, Any]:
    """Refuse a folder that is not a complete, pickle-free wavepos checkpoint; return its config.

    Raises:
        ValueError: naming what is missing (config.json, safetensors weights, remote code,
            README.md) or which file is a pickle-based format.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder} has no config.json: save the model there with save_pretrained.")
    config = json.loads(config_path.read_text())
    if "wavepos" not in config:
        raise ValueError(f"{config_path} has no 'wavepos' section: this is not a wavepos checkpoint "
                         "(convert the model with hf_wavepos.apply_wavepos and save it again).")
    if not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights (model.safetensors or shards).")
    module = config.get("auto_map", {}).get("AutoModelForCausalLM", "").split(".")[0]
    if not module or not (folder / f"{module}.py").is_file():
        raise ValueError(f"{folder} has no remote code ({module or 'no auto_map'}): save it with hf_wavepos.")
    check_remote_code(folder / f"{module}.py")
    pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in FORBIDDEN_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder} holds pickle-based files {pickled}; only safetensors weights are published.")
    if not (folder / "README.md").is_file():
        raise ValueError(f"{folder} has no README.md model card: build the folder with `wavepos card`.")
    return config


# ----------------------------------------------------------------------------- the folder
def assemble_folder(
    model: Any,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    eval_run: str | Path | None = None,
    label: str | None = None,
    repo_id: str | None = None,
    name: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    recipe: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the folder that `push_folder` would upload (see the module docstring).

    Args:
        model: a wavepos model, or the path of a saved one (loaded with the plugin).
        out_dir: the folder to write; must be empty or absent unless ``overwrite``.
        tokenizer: a tokenizer, the folder or Hub id to load it from, or None to load it from
            ``model``'s folder (which must then hold one).
        eval_run, label: evaluation run folder and this model's label in it (for the card).
        repo_id: Hub id shown in the card's examples (default: ``name``).
        name: display name (default: the output folder's name).
        base_model, datasets, license, recipe: card metadata and text.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``, checked with `check_folder`.

    Raises:
        ValueError: a non-empty ``out_dir`` without ``overwrite``, a bad evaluation run or label, a
            model folder without config.json or safetensors weights, a model that is not wavepos,
            or no loadable tokenizer; all checked before anything is written or removed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    replace = out_dir.exists() and any(out_dir.iterdir())
    if replace and not overwrite:
        raise ValueError(f"{out_dir} exists and is not empty; choose another folder or pass overwrite=True "
                         "(--overwrite on the command line).")
    check_eval_label(eval_run, label)
    source = None
    if isinstance(model, (str, Path)):
        source = Path(model)
        if not (source / "config.json").is_file():
            raise ValueError(f"{source} has no config.json; give the folder of a saved wavepos model.")
        if not list(source.glob("*.safetensors")):
            raise ValueError(f"{source} has no .safetensors weights; only safetensors checkpoints are published.")
        model = AutoModelForCausalLM.from_pretrained(source)
    if not is_wavepos_model_type(str(getattr(model.config, "model_type", ""))):
        raise ValueError(f"{type(model).__name__} is not a wavepos model; convert it with hf_wavepos.apply_wavepos.")
    if tokenizer is None and source is None:
        raise ValueError("pass tokenizer= (a tokenizer, or the folder or Hub id to load it from): the model "
                         "object carries none.")
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        where = source if tokenizer is None else tokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except (*loading_errors(), ValueError) as err:
            raise ValueError(
                f"no tokenizer could be loaded from {where} ({err}); pass tokenizer= (a tokenizer, or the folder "
                "or Hub id to load it from)."
            ) from err
    if replace:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if eval_run is not None:
        run = read_eval_run(eval_run)
        for evaluation in run["evaluations"].values():
            for file in evaluation["files"]:
                if Path(file).suffix in EVAL_SUFFIXES:
                    target = out_dir / "eval" / file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(eval_run) / file, target)
        shutil.copyfile(Path(eval_run) / "run.json", out_dir / "eval" / "run.json")
    config = json.loads((out_dir / "config.json").read_text())
    name = name or out_dir.name
    card = render_card(config, name=name, repo_id=repo_id or name, eval_run=eval_run, label=label,
                       base_model=base_model, datasets=datasets, license=license, recipe=recipe)
    (out_dir / "README.md").write_text(card)
    check_folder(out_dir)
    return out_dir
