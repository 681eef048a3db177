"""Videos: PyAV decoding at data.video_fps with min/max frames, the pixel cap, and bad files skipped
and reported by the manifest reader naming the record. Every clip is encoded here with PyAV."""

import io
import json
from fractions import Fraction

import av
import numpy as np
import pytest

from mmrlhf.data.formats import read_manifest
from mmrlhf.data.media import ImageDecodeError, MediaLimits, decode_image, encode_png
from mmrlhf.data.video import decode_media, decode_video, encode_video, read_video_source, sample_frame_indices


def numbered_frames(n: int, size: int = 16) -> np.ndarray:
    """(n, size, size, 3) uint8 frames, frame i filled with the value 10 * i (identifiable after decoding)."""
    return np.stack([np.full((size, size, 3), 10 * i, dtype=np.uint8) for i in range(n)])


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Which numbered frame each decoded frame is (lossless clips decode exactly)."""
    return [int(f[0, 0, 0]) // 10 for f in frames]


def first_half(data: bytes) -> bytes:
    """A file cut in the middle, as an interrupted download leaves it."""
    return data[:len(data) // 2]


def no_frame_clip(container_format: str = "matroska", codec: str = "ffv1") -> bytes:
    """A video file with a header and no frame in it."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(10))
        stream.width, stream.height = 16, 16
        container.start_encoding()
    return buffer.getvalue()


def test_lossless_clip_round_trips_every_frame_at_its_own_rate():
    frames = numbered_frames(6)
    clip = encode_video(frames, fps=10, lossless=True)
    decoded = decode_video(clip, "r1", MediaLimits(video_fps=10, video_min_frames=1, video_max_frames=16))
    np.testing.assert_array_equal(decoded, frames)


def test_decoding_samples_frames_at_video_fps():
    clip = encode_video(numbered_frames(10), fps=10, lossless=True)  # frame i shown at i / 10 s
    decoded = decode_video(clip, "r1", MediaLimits(video_fps=4, video_min_frames=1, video_max_frames=16))
    assert frame_numbers(decoded) == [0, 2, 5, 7]  # at 0, 0.25, 0.5, 0.75 s: the frame on screen then


def test_max_frames_thins_and_min_frames_spreads_over_the_whole_clip():
    clip = encode_video(numbered_frames(10), fps=10, lossless=True)
    thinned = decode_video(clip, "r1", MediaLimits(video_fps=10, video_min_frames=1, video_max_frames=4))
    assert frame_numbers(thinned) == [0, 3, 6, 9]
    spread = decode_video(clip, "r1", MediaLimits(video_fps=1, video_min_frames=3, video_max_frames=8))
    assert frame_numbers(spread) == [0, 4, 9]  # 1 fps gives 1 frame; 3 are spread over all 10 (4.5 rounds to 4)


def test_sample_frame_indices_repeat_frames_of_a_clip_shorter_than_min_frames():
    times = np.array([0.0, 0.5])
    assert sample_frame_indices(times, fps=2, min_frames=4, max_frames=8).tolist() == [0, 0, 1, 1]


def test_h264_mp4_decodes_to_rgb_frames_near_the_originals():
    frames = numbered_frames(4, size=32) * 2 + 40  # mid-gray levels, flat: H.264 keeps them within a few levels
    decoded = decode_video(encode_video(frames, fps=2), "r1", MediaLimits(video_fps=2, video_max_frames=8))
    assert decoded.shape == (4, 32, 32, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).max() <= 3


def test_lossless_encoding_is_byte_identical_and_decodes_to_the_frames():
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    data = encode_video(frames, fps=2, lossless=True)
    assert data == encode_video(frames, fps=2, lossless=True)
    np.testing.assert_array_equal(decode_video(data, "clip"), frames)


@pytest.mark.parametrize("data, reason", [
    (b"", "video is empty"),
    (b"\x00\x01 not a video at all " * 20, "video data is corrupt or truncated"),
    (first_half(encode_video(numbered_frames(8, 32), fps=2)), "video data is corrupt or truncated"),  # mp4: no index
    (first_half(encode_video(numbered_frames(8), fps=2, lossless=True)), "video is truncated"),  # mkv: fewer frames
    (no_frame_clip(), "video has no decodable frame"),
    (no_frame_clip("mp4", "libx264"), "video has no decodable frame"),
    (encode_video(numbered_frames(2, 32), fps=2), "video is 32x32 a frame, above the 1000-pixel limit"),
], ids=["empty", "corrupt", "truncated-mp4", "truncated-mkv", "no-frames-mkv", "no-frames-mp4", "over-cap"])
def test_bad_video_raises_the_decode_error_naming_the_record(data, reason):
    with pytest.raises(ImageDecodeError, match=f"^record clip-7: {reason}"):
        decode_video(data, "clip-7", MediaLimits(max_pixels=1000))


def test_decode_media_gives_the_video_when_there_is_one_else_the_image():
    image = encode_png(np.zeros((8, 8), dtype=np.uint8))
    clip = encode_video(numbered_frames(2), fps=2, lossless=True)
    assert decode_media(image, None, "r1").shape == (8, 8)
    assert decode_media(image, clip, "r1").shape == (2, 16, 16, 3)


def test_folder_of_frames_is_read_as_a_lossless_clip(tmp_path):
    frames = numbered_frames(3)
    for i, frame in enumerate(frames):
        (tmp_path / f"{i:03d}.png").write_bytes(encode_png(frame))
    (tmp_path / "notes.txt").write_text("not a frame")
    clip = read_video_source(tmp_path, "r1", limits=MediaLimits(video_fps=2))
    decoded = decode_video(clip, "r1", MediaLimits(video_fps=2, video_min_frames=1))
    np.testing.assert_array_equal(decoded, frames)


def test_manifest_video_records_are_kept_or_skipped_and_reported_naming_the_record(tmp_path):
    good = encode_video(numbered_frames(4, 32), fps=2)
    (tmp_path / "good.mp4").write_bytes(good)
    (tmp_path / "corrupt.mp4").write_bytes(b"garbage" * 100)
    (tmp_path / "truncated.mp4").write_bytes(first_half(good))
    (tmp_path / "empty.mkv").write_bytes(no_frame_clip())
    big = encode_video(np.zeros((2, 64, 64, 3), dtype=np.uint8), fps=2)
    (tmp_path / "big.mp4").write_bytes(big)
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(numbered_frames(3, 32)):
        (tmp_path / "frames" / f"{i}.png").write_bytes(encode_png(frame))
    names = {"good": "good.mp4", "corrupt": "corrupt.mp4", "truncated": "truncated.mp4", "noframes": "empty.mkv",
             "big": "big.mp4", "folder": "frames", "missing": "gone.webm"}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": rid, "prompt": "Summarize the video.", "video": path}) + "\n"
                                for rid, path in names.items()))
    table, report = read_manifest(manifest, media=MediaLimits(max_pixels=32 * 32, video_fps=2))
    assert table.column("id").to_pylist() == ["good", "folder"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"corrupt", "truncated", "noframes", "big", "missing"}
    assert "corrupt or truncated" in skipped["corrupt"] and "corrupt or truncated" in skipped["truncated"]
    assert skipped["noframes"].startswith("video has no decodable frame")
    assert skipped["big"] == "video is 64x64 a frame, above the 1024-pixel limit"
    assert "not found" in skipped["missing"]
    rows = table.to_pylist()
    assert rows[0]["video"] == good  # kept as read
    first = decode_image(rows[1]["image"], "folder")  # the image is the first frame
    np.testing.assert_array_equal(first, numbered_frames(1, 32)[0])


def test_manifest_record_with_both_image_and_video_is_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "prompt": "p", "image": "x.png", "video": "x.mp4"}) + "\n")
    with pytest.raises(ValueError, match="record a.*fields 'image' and 'video' are both set"):
        read_manifest(manifest)
