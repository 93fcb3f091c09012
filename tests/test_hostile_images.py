"""Class 8 of the hardening issue: an image folder holding a decompression bomb (a PNG whose header
claims 20000 x 20000 pixels) is refused with one line, before its pixels are decoded."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hostile import TINY, assert_refused
from PIL import Image


def _png_header_only(path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR claiming width x height greyscale pixels, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def _folder(root):
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(("width", "height", "match"), [
    (20000, 20000, "cannot read image"),          # past PIL's own limit: DecompressionBombError
    (5000, 5000, "more than the 16777216 allowed"),  # within PIL's limit, past mrl's
])
def test_decompression_bomb_in_an_image_folder(tmp_path, width, height, match):
    images = _folder(tmp_path / "images")
    _png_header_only(images / "a" / "bomb.png", width, height)
    assert_refused(tmp_path, "train", "--data", images, *TINY, "--out", tmp_path / "run", match=match)


def test_an_honest_folder_still_trains(tmp_path):
    from hostile import invoke

    images = _folder(tmp_path / "images")
    code, output = invoke("train", "--data", images, *TINY, "--out", tmp_path / "run")
    assert code == 0, output
