"""Pre/post-processing hooks for the models config (`pre:` / `post:`): each takes one request's
named arrays (items first) and returns named arrays.

- `image_bytes`: encoded images (BYTES, one per item) to a normalised FP32 tensor (Pillow).
- `top_k`: logits to the k best class indices and their softmax scores.
"""

from __future__ import annotations

import io

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_bytes(tensors: dict, size: int = 224, source: str = "image", target: str = "input") -> dict:
    """Decode each item's image (JPEG, PNG, ... as Pillow reads them), resize to size x size, scale to
    [0, 1] and normalise with the ImageNet mean and deviation: (n, 3, size, size) FP32."""
    from PIL import Image

    out = []
    for raw in tensors[source].reshape(len(tensors[source]), -1)[:, 0]:
        img = Image.open(io.BytesIO(raw)).convert("RGB").resize((size, size), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    x = (np.stack(out) - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[:, None, None]
    return {target: x.astype(np.float32)}


def top_k(outputs: dict, k: int = 5, source: str = "output") -> dict:
    """The k highest-scoring classes per item: `classes` INT64 (n, k) and `scores` FP32 (n, k),
    the softmax probabilities, best first."""
    logits = outputs[source].reshape(len(outputs[source]), -1).astype(np.float64)
    idx = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {"classes": idx.astype(np.int64), "scores": np.take_along_axis(p, idx, axis=1).astype(np.float32)}
