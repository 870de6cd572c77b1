"""Self-contained modeling code for ``trust_remote_code`` loading without hf_wavepos installed.

`bundle_source` concatenates the package modules one architecture needs (wavelet math,
configuration, the reference and chunked attention backends, the model classes) into one
readable file that imports only the standard library, torch and transformers. Imports of
``hf_wavepos`` modules are replaced by ``pass`` (their names are defined earlier in the same
file), and ``from __future__ import annotations`` is hoisted to the top. Nothing is executed
or generated at run time: the file is plain source, the package's own, written next to the
weights by ``save_pretrained``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from hf_wavepos.version import __version__

PACKAGE_ROOT = Path(__file__).resolve().parent.parent

# Bundled in this order: every module only uses names of modules before it (at import time).
CORE_MODULES = (
    "wavelets.py",
    "config.py",
    "basis.py",
    "attention/contract.py",
    "attention/reference.py",
    "attention/chunks.py",
    "attention/workers.py",
    "attention/decode.py",
    "attention/chunked.py",
    "attention/dispatch.py",
    "positions.py",
    "models/common.py",
    "models/linking.py",
)

HEADER = '''"""hf_wavepos remote code for {model_type}: wavelet-based relative positions (Oka et al., ICLR 2025).

Self-contained copy of the hf_wavepos modules this model needs, so that
AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True) works without the plugin.
It imports only the Python standard library, torch and transformers. Source of each section is
named in its banner; the package (hf-wavepos {version}) is the maintained original.
"""

from __future__ import annotations
'''


def _strip(source: str, name: str) -> str:
    """Replace hf_wavepos imports and the __future__ import of one module by ``pass``."""
    tree = ast.parse(source)
    lines = source.splitlines()
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.module == "__future__" or (node.module or "").split(".")[0] == "hf_wavepos"
        ):
            spans.append((node.lineno, node.end_lineno, node.col_offset))
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "hf_wavepos" for a in node.names):
            spans.append((node.lineno, node.end_lineno, node.col_offset))
    for start, end, col in sorted(spans, reverse=True):
        lines[start - 1 : end] = [" " * col + "pass  # bundled: name defined above"]
    return "\n".join(lines)


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def bundle_source(arch_file: str | Path, model_type: str) -> str:
    """The remote-code file for one architecture, e.g. ``bundle_source(llama.__file__, "wavepos_llama")``.

    Args:
        arch_file: the architecture's model file (absolute, or relative to the package folder).
        model_type: the wavepos model type (named in the header).

    Raises:
        RuntimeError: if two bundled modules define the same top-level name (they would clash).
    """
    parts = [HEADER.format(model_type=model_type, version=__version__)]
    seen: dict[str, str] = {}
    arch_path = PACKAGE_ROOT / arch_file
    arch_name = arch_path.relative_to(PACKAGE_ROOT).as_posix() if arch_path.is_relative_to(PACKAGE_ROOT) else arch_path.name
    for relative, path in (*((m, PACKAGE_ROOT / m) for m in CORE_MODULES), (arch_name, arch_path)):
        source = path.read_text()
        for name in _top_level_names(source):
            if name in seen and not name.startswith("__"):
                raise RuntimeError(f"cannot bundle: {name!r} is defined in both {seen[name]} and {relative}.")
            seen[name] = relative
        banner = f"\n\n# {'=' * 70}\n# hf_wavepos/{relative}\n# {'=' * 70}\n"
        parts.append(banner + _strip(source, relative).strip() + "\n")
    text = "".join(parts)
    compile(text, f"modeling_{model_type}.py", "exec")  # syntax check only
    return text


def remote_module_name(model_type: str) -> str:
    """File stem of the remote code: ``modeling_<model_type>``."""
    return f"modeling_{model_type}"


def write_remote_code(folder: str | Path, arch_file: str | Path, model_type: str) -> Path:
    """Write the bundled remote code (`bundle_source`) into ``folder`` and return its path."""
    path = Path(folder) / f"{remote_module_name(model_type)}.py"
    path.write_text(bundle_source(arch_file, model_type))
    return path


def auto_map(model_type: str, config_class: str, base_class: str, causal_lm_class: str) -> dict[str, str]:
    """The ``auto_map`` entry of config.json pointing the Auto classes at the remote code."""
    module = remote_module_name(model_type)
    return {
        "AutoConfig": f"{module}.{config_class}",
        "AutoModel": f"{module}.{base_class}",
        "AutoModelForCausalLM": f"{module}.{causal_lm_class}",
    }


def check_saved_folder(folder: str | Path) -> None:
    """Raise ValueError if ``folder`` lacks what remote-code loading needs (config, code, weights)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder} has no config.json; save the model with save_pretrained first.")
    config = json.loads(config_path.read_text())
    module = config.get("auto_map", {}).get("AutoModelForCausalLM", "").split(".")[0]
    if not module or not (folder / f"{module}.py").is_file():
        raise ValueError(f"{folder} has no remote code ({module or 'auto_map missing'}); re-save with hf_wavepos.")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights.")
