"""Rendered frames for the reward model: downsampling, and clips as viewable frame strips.

Frames are 8-bit grey (Pillow `convert("L")`) downsampled with Pillow's box filter (area
average), so a thin pole still shows as a faint line at 64x64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def downsample(frame: np.ndarray, size: int) -> np.ndarray:
    """One rendered RGB frame uint8 (H, W, 3) -> grey uint8 (size, size).

    Raises ValueError for anything but a uint8 (H, W, 3) array.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"downsample: frame must be a uint8 (H, W, 3) array, got {type(frame).__name__} {shape}")
    return np.asarray(Image.fromarray(frame).convert("L").resize((size, size), Image.BOX))


def save_strip(clip: np.ndarray, path: str | Path, every: int = 1) -> Path:
    """Write a clip uint8 (L, H, W) as one PNG strip of every `every`-th frame, left to right.

    Returns the path. Raises ValueError for a clip that is not (L, H, W) uint8 or every < 1.
    """
    if clip.ndim != 3 or clip.dtype != np.uint8 or every < 1:
        raise ValueError(f"save_strip: clip must be uint8 (L, H, W) and every >= 1, got {clip.dtype} "
                         f"{clip.shape}, every={every}")
    frames = clip[::every]  # (L', H, W)
    strip = np.concatenate(list(frames), axis=1)  # (H, L' * W)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path)
    return path
