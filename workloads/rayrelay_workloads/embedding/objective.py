"""What an embedding model is trained and judged on: pooling, the loss, retrieval figures.

- :func:`mean_pool`: the mean of the token vectors the attention mask keeps, L2-normalised
  (what sentence-transformers' Pooling(mean) + Normalize compute, and what the exported
  graph computes inside itself: ``export.py``);
- :func:`ranking_loss`: multiple-negatives ranking loss. Each anchor's positive is the
  right answer among every positive and every hard negative of the batch (in-batch
  negatives): cross-entropy over ``scale`` x cosine similarities;
- :func:`retrieval`: recall@1 and MRR of anchors against every validation positive, and
  :func:`cosine_rows`: the row-wise cosine similarity of two sets of vectors (parity).

torch is imported inside the torch functions; the numpy ones run anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METRIC = "val_recall_at_1"  # what picks the best checkpoint (higher is better)
SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default
EVAL_BATCH = 64


def mean_pool(hidden: Any, mask: Any) -> Any:
    """L2-normalised mean of ``hidden`` (batch, seq, dim) over the positions ``mask`` (batch, seq) keeps."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=-1)


def ranking_loss(anchors: Any, positives: Any, negatives: Any = None, scale: float = SCALE) -> Any:
    """Multiple-negatives ranking loss of normalised vectors; ``negatives`` (k, dim) may be None or empty."""
    import torch

    candidates = positives if negatives is None or len(negatives) == 0 else torch.cat([positives, negatives])
    scores = scale * anchors @ candidates.T
    target = torch.arange(len(anchors), device=anchors.device)
    return torch.nn.functional.cross_entropy(scores.float(), target)


@dataclass(frozen=True)
class Retrieval:
    recall_at_1: float
    mrr: float
    pairs: int


def retrieval(anchors: np.ndarray, positives: np.ndarray) -> Retrieval:
    """Anchor i's right answer is positive i, ranked among every positive by cosine similarity.

    Ties count against the anchor (a rank is 1 + the positives scoring at least as high,
    other than its own), so a model that maps everything to one vector scores 1/n, not 1.
    """
    a = _unit(np.asarray(anchors, dtype=np.float64))
    p = _unit(np.asarray(positives, dtype=np.float64))
    if a.shape != p.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"anchors {a.shape} and positives {p.shape} must be two equal (n, dim) arrays")
    scores = a @ p.T
    own = np.diag(scores)[:, None]
    others = scores >= own - 1e-12
    np.fill_diagonal(others, False)
    ranks = 1 + others.sum(axis=1)
    return Retrieval(float((ranks == 1).mean()), float((1.0 / ranks).mean()), len(a))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of ``a`` with row i of ``b``."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"shapes differ: {a64.shape} vs {b64.shape}")
    out: np.ndarray = (_unit(a64) * _unit(b64)).sum(axis=1)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(norms, 1e-12)
    return out


def without_pooler(model: Any) -> Any:
    """``model`` without its [CLS] pooler head (BERT's ``pooler``), which mean pooling never uses.

    Left in, its parameters get no gradient, and DDP (two or more workers) stops the second
    step ("Expected to have finished reduction in the prior iteration"); left out, the
    checkpoints and the export hold only what the vectors are made of."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def encode_texts(tokenizer: Any, texts: Sequence[str], max_len: int, device: Any = None) -> Any:
    """Token ids of ``texts`` for ``model`` (padded to the longest, truncated at ``max_len``)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)


def embed(model: Any, inputs: dict[str, Any]) -> Any:
    """The pooled, normalised vectors of one encoded batch (with gradients when enabled)."""
    out = model(**inputs)
    return mean_pool(out.last_hidden_state, inputs["attention_mask"])


def embed_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], max_len: int, batch: int = EVAL_BATCH
) -> np.ndarray:
    """Vectors of ``texts`` (no gradients), batch by batch, as a float32 (n, dim) array."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            out.append(embed(model, encode_texts(tokenizer, texts[i : i + batch], max_len, device)))
    if was_training:
        model.train()
    return torch.cat(out).float().cpu().numpy()
