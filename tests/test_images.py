"""Every image a real folder may hold reads as upright 8-bit RGB; broken files get a reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainer.data.images import check_image, is_image_file, load_rgb


def _rgb(size=(40, 30)) -> Image.Image:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = 200
    arr[: size[1] // 2, :, 1] = 180
    return Image.fromarray(arr)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rgb.jpg", lambda: _rgb()),
        ("gray.png", lambda: _rgb().convert("L")),
        ("palette.png", lambda: _rgb().convert("P")),
        ("rgba.png", lambda: _rgb().convert("RGBA")),
        ("cmyk.jpg", lambda: _rgb().convert("CMYK")),
        ("pic.bmp", lambda: _rgb()),
        ("pic.webp", lambda: _rgb()),
        ("pic.tiff", lambda: _rgb()),
        ("la.png", lambda: _rgb().convert("LA")),
    ],
)
def test_modes_and_formats_read_as_rgb(tmp_path, name, make):
    path = tmp_path / name
    make().save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert check_image(path) is None


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    arr = np.full((20, 20), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    pixel = load_rgb(path).getpixel((5, 5))
    assert pixel[0] == pixel[1] == pixel[2] and 120 <= pixel[0] <= 135


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    path = tmp_path / "clear.png"
    img.save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, b = load_rgb(path).getpixel((8, 8))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    img = _rgb((40, 20))  # landscape on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the phone held upright
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_jpeg_draft_keeps_at_least_min_side(tmp_path):
    path = tmp_path / "big.jpg"
    _rgb((1600, 1200)).save(path, quality=90)
    img = load_rgb(path, min_side=256)
    assert min(img.size) >= 256 and img.size[0] < 1600


def test_broken_files_have_reasons(tmp_path):
    truncated = tmp_path / "truncated.jpg"
    good = tmp_path / "good.jpg"
    _rgb((200, 200)).save(good, quality=95)
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path in (truncated, text, empty):
        reason = check_image(path)
        assert reason and "decode" in reason, (path, reason)
    assert check_image(tmp_path / "missing.jpg") == "file not found"


def test_non_images_are_not_image_files():
    assert not is_image_file(".DS_Store")
    assert not is_image_file("Thumbs.db")
    assert not is_image_file("notes.txt")
    assert not is_image_file("._photo.jpg")  # macOS resource fork
    assert is_image_file("IMG_0001.JPG") and is_image_file("scan.TIFF")


def _heic_class_folder(root, monkeypatch, readable: bool):
    """root/{jpg_and_heic,heic_only,plain}/ with HEIC photos; `readable`: whether pillow-heif is there."""
    from conftest import make_class_folder

    from trainer.data import images

    pillow_heif = pytest.importorskip("pillow_heif") if readable else None
    make_class_folder(root / "train", {"mixed": 2, "heic_only": 0, "plain": 2})
    make_class_folder(root / "val", {"mixed": 1, "heic_only": 0, "plain": 1})
    images.heif_reader.cache_clear()
    if pillow_heif:
        pillow_heif.register_heif_opener()
    for split, count in (("train", 2), ("val", 1)):
        for folder in ("mixed", "heic_only"):
            for i in range(count):
                path = root / split / folder / f"IMG_{i}.HEIC"
                if pillow_heif:
                    _rgb((48, 48)).save(path, format="HEIF")
                else:
                    path.write_bytes(b"\x00\x00\x00\x18ftypheic")
    if not readable:
        monkeypatch.setattr(images, "heif_reader", lambda: False)
    return root


def test_heic_photos_are_read_with_pillow_heif(tmp_path, monkeypatch):
    from trainer.data.scan import drop_bad_images
    from trainer.data.sources.folder import index_folder

    index = index_folder(_heic_class_folder(tmp_path / "photos", monkeypatch, readable=True))
    assert sum(p.endswith(".HEIC") for p, _ in index.train) == 4
    assert drop_bad_images(index) == {} and load_rgb(index.train[0][0]).size == (48, 48)


def test_heic_without_pillow_heif_is_listed_with_the_install_command(tmp_path, monkeypatch, caplog):
    """Poor: HEIC photos were ignored without a word; an all-HEIC class said "no images (jpg, png, ...)"."""
    from trainer.data.scan import BadImagesError, drop_bad_images
    from trainer.data.sources.folder import index_folder

    index = index_folder(_heic_class_folder(tmp_path / "photos", monkeypatch, readable=False))
    with pytest.raises(BadImagesError, match="the train split has no images of: heic_only"):
        drop_bad_images(index)
    assert caplog.text.count("HEIC/HEIF photo, skipped") == 6 and "pip install 'trainer[heic]'" in caplog.text
