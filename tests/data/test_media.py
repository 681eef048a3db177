import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmrlhf.data.media import ImageDecodeError, decode_image, encode_png, read_image_source


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed 1-bit grayscale PNG whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit gray, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def noise_png(shape=(32, 32, 3)) -> bytes:
    """Random pixels, so the PNG does not compress to a few bytes and can be cut in half."""
    return encode_png(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3)])
def test_png_round_trip_keeps_gray_and_rgb_shapes(shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    decoded = decode_image(encode_png(array), "r1")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


def test_rgba_and_palette_images_become_rgb():
    for mode in ("RGBA", "P", "1"):
        buffer = io.BytesIO()
        Image.new(mode, (6, 4)).save(buffer, format="PNG")
        assert decode_image(buffer.getvalue(), "r1").shape == (4, 6, 3)


def test_header_above_max_pixels_is_refused_before_decoding():
    bomb = png_header_claiming(5_000, 5_000)  # 25M pixels: under PIL's guard, over ours
    assert len(bomb) < 100
    with pytest.raises(ImageDecodeError,
                       match="record bomb: image is 5000x5000, above the 16000000-pixel limit"):
        decode_image(bomb, "bomb")


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["pil-warning", "pil-error"])
def test_pil_decompression_bomb_guard_becomes_image_decode_error(side):
    # PIL warns above 89M pixels and raises above twice that; our max_pixels lets both through
    with pytest.raises(ImageDecodeError, match="record bomb: PIL refused a decompression bomb"):
        decode_image(png_header_claiming(side, side), "bomb", max_pixels=10**12)


def test_low_max_pixels_refuses_a_real_image():
    with pytest.raises(ImageDecodeError, match="image is 32x32, above the 100-pixel limit"):
        decode_image(noise_png(), "small", max_pixels=100)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "image is empty"),
        (b"definitely not an image", "not a recognised image format"),
        (noise_png()[:1500], "truncated or corrupt"),
    ],
    ids=["zero-length", "corrupt", "truncated"],
)
def test_broken_bytes_raise_with_record_id(data, reason):
    with pytest.raises(ImageDecodeError, match=f"record rid-9: .*{reason}") as info:
        decode_image(data, "rid-9")
    assert info.value.record_id == "rid-9"
    assert isinstance(info.value, ValueError)


def test_read_image_source_resolves_relative_paths_and_passes_bytes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png bytes")
    assert read_image_source("a.png", "r1", base_dir=tmp_path) == b"png bytes"
    assert read_image_source(str(tmp_path / "a.png"), "r1") == b"png bytes"
    assert read_image_source(b"raw", "r1") == b"raw"


def test_zero_length_file_reads_then_fails_to_decode(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    data = read_image_source("empty.png", "r2", base_dir=tmp_path)
    with pytest.raises(ImageDecodeError, match="record r2: image is empty"):
        decode_image(data, "r2")


def test_missing_file_names_record_and_path(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"record r3: image file .*gone\.png not found"):
        read_image_source("gone.png", "r3", base_dir=tmp_path)


def test_urls_are_refused_unless_allowed():
    with pytest.raises(ImageDecodeError, match="record r4: .*refused unless data.allow_urls=true"):
        read_image_source("https://example.com/cat.jpg", "r4")


def test_encode_png_rejects_float_arrays():
    with pytest.raises(ValueError, match="expected uint8"):
        encode_png(np.zeros((4, 4), dtype=np.float32))
