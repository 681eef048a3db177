"""Safe image reading and decoding (PIL): every failure becomes one error naming the record.

Videos (PyAV) are in :mod:`mmrlhf.data.video`; they raise the same :class:`ImageDecodeError`.
"""

from __future__ import annotations

import io
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 16_000_000
_URL_PREFIXES = ("http://", "https://")
_URL_TIMEOUT_S = 30.0

# What PIL raises on broken input: OSError (truncated, bad zlib stream), SyntaxError (broken
# PNG chunks), ValueError/EOFError (bad header fields).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError)
# PIL's bomb guard in Image.open: a warning above MAX_IMAGE_PIXELS, an error above twice that.
_PIL_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True)
class MediaLimits:
    """How stored media are decoded: the per-frame pixel cap, and the video frame sampling.

    max_pixels: width * height above which an image or a video (per frame) is refused.
    video_fps: frames sampled per second of video time. video_min_frames / video_max_frames:
    the sampled count is brought within these bounds (frames repeated / thinned evenly).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    video_fps: float = 2.0
    video_min_frames: int = 2
    video_max_frames: int = 16


class ImageDecodeError(ValueError):
    """An image or video that cannot be read or decoded; `record_id` and `reason` say which and why.

    str(err) reads "record <record_id>: <reason>". Readers catch it to skip and report the
    record; a ValueError subclass so callers that do not care can treat it as bad input.
    """

    def __init__(self, record_id: str, reason: str):
        super().__init__(f"record {record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason


def decode_image(data: bytes, record_id: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ... anything PIL reads) to a uint8 array.

    Returns (H, W) for grayscale ("L") images and (H, W, 3) RGB for every other mode (palette,
    RGBA, CMYK, 1-bit, ...; alpha is dropped). Raises ImageDecodeError(record_id, reason) for
    empty data, bytes PIL cannot identify, truncated or corrupt pixel data (a full `load()` is
    forced, since PIL decodes lazily) and decompression bombs: width*height is checked against
    `max_pixels` from the header before any pixel is decoded, and PIL's own guard
    (`Image.MAX_IMAGE_PIXELS`, DecompressionBombWarning/Error) is turned into this error too.
    """
    if len(data) == 0:
        raise ImageDecodeError(record_id, "image is empty (0 bytes)")
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its limit; a bomb must never decode silently.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as err:
            raise ImageDecodeError(record_id, "bytes are not a recognised image format") from err
        except _PIL_BOMB as err:
            raise ImageDecodeError(record_id, f"PIL refused a decompression bomb ({err})") from err
        except _PIL_ERRORS as err:
            raise ImageDecodeError(record_id, f"image header is unreadable ({err})") from err
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                record_id, f"image is {width}x{height}, above the {max_pixels}-pixel limit"
            )
        try:
            image.load()
        except _PIL_ERRORS as err:
            reason = f"image data is truncated or corrupt ({err})"
            raise ImageDecodeError(record_id, reason) from err
    if image.mode != "L":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def read_image_source(
    src: str | Path | bytes,
    record_id: str,
    base_dir: str | Path | None = None,
    allow_urls: bool = False,
) -> bytes:
    """Return the encoded bytes of an image given as bytes, a file path or an http(s) URL.

    Bytes pass through unchanged. A relative path is resolved against `base_dir` (e.g. the
    manifest's folder) when given. URLs are refused unless `allow_urls`, so a data file can
    never make a run reach the network by surprise; allowed ones are fetched with urllib.
    Raises ImageDecodeError naming the record and the path/URL when the file is missing or
    unreadable, the URL is refused or the fetch fails; TypeError for any other type of `src`.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if not isinstance(src, (str, Path)):
        raise TypeError(f"record {record_id}: image source must be bytes or a path, "
                        f"got {type(src).__name__}")
    if isinstance(src, str) and src.startswith(_URL_PREFIXES):
        return _fetch_url(src, record_id, allow_urls)
    path = Path(src)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ImageDecodeError(record_id, f"image file {path} not found") from err
    except OSError as err:
        raise ImageDecodeError(record_id, f"image file {path} is unreadable ({err})") from err


def _fetch_url(url: str, record_id: str, allow_urls: bool) -> bytes:
    """GET `url` with urllib when allowed; errors as in `read_image_source`."""
    if not allow_urls:
        raise ImageDecodeError(
            record_id,
            f"image {url} is a URL; remote images are refused unless data.allow_urls=true",
        )
    try:
        with urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response:
            return response.read()
    except OSError as err:  # URLError, HTTPError and timeouts are all OSErrors
        raise ImageDecodeError(record_id, f"image {url} could not be fetched ({err})") from err


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) grayscale or (H, W, 3) RGB array as PNG bytes (PIL, lossless).

    Raises ValueError for any other dtype or shape.
    """
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    ):
        raise ValueError(
            f"encode_png: expected uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
