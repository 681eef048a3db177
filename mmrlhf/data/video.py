"""Safe video reading, decoding and encoding (PyAV): every failure becomes one error naming the record.

A video is stored in the records as its encoded bytes (an mp4, webm or any container FFmpeg
reads); a folder of frame images is encoded losslessly (FFV1 in Matroska) when it is read, so
later stages see one kind of video. Decoded videos are uint8 frames ``(F, H, W, 3)`` RGB,
sampled at ``video_fps`` frames per second of the video's own timestamps and then brought
within ``[video_min_frames, video_max_frames]`` (see :func:`sample_frame_indices`).
Errors are :class:`mmrlhf.data.media.ImageDecodeError`, the one error readers catch to skip and
report a record whose media is unusable, as they do for images.
Source: PyAV (`av.open`, `container.decode`, `VideoFrame.to_ndarray`), FFmpeg's decoders.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmrlhf.data.media import ImageDecodeError, MediaLimits, decode_image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # the files of a folder of frames
_BITEXACT = {"fflags": "+bitexact"}  # no muxer version or date in the file: same frames, same bytes


def sample_frame_indices(times: np.ndarray, fps: float, min_frames: int, max_frames: int) -> np.ndarray:
    """Which decoded frames to keep -> (K,) int64 indices into ``times``, ascending (repeats allowed).

    times: (N,) seconds of each decoded frame, ascending, N >= 1. One frame per 1/fps seconds
    from the first: for each target time t_0 + k / fps up to the last frame, the last frame
    shown at or before it. Then, above ``max_frames``, ``max_frames`` of those evenly spread
    (``np.linspace``, rounded); below ``min_frames``, ``min_frames`` evenly spread over all N
    decoded frames instead (repeating frames when N < min_frames).
    """
    targets = np.arange(times[0], times[-1] + 1e-9, 1.0 / fps)  # (K,) seconds
    kept = np.searchsorted(times, targets + 1e-9, side="right") - 1  # (K,) the frame on screen at each target
    if len(kept) > max_frames:
        kept = kept[_spread(len(kept), max_frames)]
    elif len(kept) < min_frames:
        kept = _spread(len(times), min_frames)
    return kept.astype(np.int64)


def _spread(n: int, k: int) -> np.ndarray:
    """k indices into range(n) evenly spread from the first to the last, rounded, (k,) int64."""
    return np.rint(np.linspace(0, n - 1, k)).astype(np.int64)


def decode_video(data: bytes, record_id: str, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Decode encoded video bytes to sampled uint8 RGB frames (F, H, W, 3) (see :class:`MediaLimits`).

    Raises ImageDecodeError(record_id, reason) for empty bytes, bytes FFmpeg cannot open or
    decode (corrupt, or truncated before its index), no video stream or no frame, a frame size above
    ``limits.max_pixels`` (checked from the stream header before any frame is decoded), no
    decodable frame, or decoded frames that end more than two frame intervals before the
    duration the container declares (truncated after its header).
    """
    if len(data) == 0:
        raise ImageDecodeError(record_id, "video is empty (0 bytes)")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ImageDecodeError(record_id, "video has no decodable frame (no video stream)")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > limits.max_pixels:
                raise ImageDecodeError(record_id, f"video is {width}x{height} a frame, above the "
                                                  f"{limits.max_pixels}-pixel limit")
            decoded = [(float(frame.time or 0.0), frame.to_ndarray(format="rgb24"))
                       for frame in container.decode(stream)]
            declared = container.duration / av.time_base if container.duration else None
            rate = float(stream.average_rate or limits.video_fps)
    except av.error.EOFError as err:  # FFmpeg found the end of the data before a frame (a clip of 0 frames)
        raise ImageDecodeError(record_id, f"video has no decodable frame ({err})") from err
    except av.error.FFmpegError as err:
        raise ImageDecodeError(record_id, f"video data is corrupt or truncated ({err})") from err
    if not decoded:
        raise ImageDecodeError(record_id, "video has no decodable frame")
    times = np.array([t for t, _ in decoded])
    if declared is not None and times[-1] + 2.0 / rate < declared - 1e-6:
        raise ImageDecodeError(record_id, f"video is truncated: frames end at {times[-1]:.2f} s of the "
                                          f"{declared:.2f} s the container declares")
    keep = sample_frame_indices(times, limits.video_fps, limits.video_min_frames, limits.video_max_frames)
    return np.stack([decoded[i][1] for i in keep])


def encode_video(frames: np.ndarray, fps: float, lossless: bool = False) -> bytes:
    """Encode uint8 RGB frames (F, H, W, 3), F >= 1, at ``fps`` frames per second -> container bytes.

    Default: H.264 (libx264, CRF 18, yuv420p) in MP4, so H and W must be even; ``lossless``:
    FFV1 (RGB) in Matroska, any size. One encoder thread and FFmpeg's bitexact flags. FFV1 gives
    the same bytes for the same frames; H.264 gave the same bytes for the digits clips every time
    here, but once not for frames of random noise late in a long test session (cause not found),
    so only the lossless path is promised byte for byte. Raises ValueError for another dtype or
    shape, or odd sizes with H.264.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or len(frames) == 0:
        raise ValueError(f"encode_video: expected uint8 (F>=1, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if not lossless and (height % 2 or width % 2):
        raise ValueError(f"encode_video: H.264 needs even sizes, got {width}x{height}")
    codec, container_format, pix_fmt, options = (("ffv1", "matroska", "bgr0", {}) if lossless
                                                 else ("libx264", "mp4", "yuv420p", {"crf": "18"}))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format, options=_BITEXACT) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def read_video_source(src: str | Path | bytes, record_id: str, base_dir: str | Path | None = None,
                      limits: MediaLimits = MediaLimits()) -> bytes:
    """The encoded bytes of a video given as bytes, a video file path, or a folder of frame images.

    Bytes pass through; a relative path is resolved against ``base_dir``. A folder's image files
    (``FRAME_SUFFIXES``, in name order) are decoded (``decode_image``, the pixel cap applies) and
    encoded losslessly at ``limits.video_fps`` (:func:`encode_video`): its frames are taken as
    already sampled. Raises ImageDecodeError naming the record and path when the file or
    folder is missing or unreadable, the folder holds no frame image, its frames differ in size,
    or a frame does not decode; TypeError for any other type of ``src``.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if not isinstance(src, (str, Path)):
        raise TypeError(f"record {record_id}: video source must be bytes or a path, got {type(src).__name__}")
    path = Path(src)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    try:
        if not path.is_dir():
            return path.read_bytes()
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        frames = [decode_image(f.read_bytes(), record_id, limits.max_pixels) for f in files]
    except FileNotFoundError as err:
        raise ImageDecodeError(record_id, f"video {path} not found") from err
    except OSError as err:
        raise ImageDecodeError(record_id, f"video {path} is unreadable ({err})") from err
    if not frames:
        raise ImageDecodeError(record_id, f"video folder {path} holds no frame image ({', '.join(FRAME_SUFFIXES)})")
    if len({f.shape[:2] for f in frames}) > 1:
        raise ImageDecodeError(record_id, f"video folder {path}: frames differ in size")
    rgb = [np.repeat(f[:, :, None], 3, axis=2) if f.ndim == 2 else f for f in frames]
    return encode_video(np.stack(rgb), limits.video_fps, lossless=True)


def decode_media(image: bytes, video: bytes | None, record_id: str, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """A record's visual input: its video's sampled frames (F, H, W, 3) when it has a video,
    else its image (H, W) or (H, W, 3), uint8. Raises ImageDecodeError as the two decoders do."""
    if video is not None:
        return decode_video(video, record_id, limits)
    return decode_image(image, record_id, limits.max_pixels)
