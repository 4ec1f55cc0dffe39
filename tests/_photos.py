"""A folder of real photos (scikit-image's) as a user's dataset looks: JPEG and PNG, grayscale, RGBA,
16-bit, an EXIF-rotated phone-style JPEG, a subfolder, a corrupt file and a file that is no image.

Photos are downscaled to at most ``SIDE`` pixels so that the tiny models' runs stay fast on a CPU."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import numpy as np

SIDE = 96
EXIF_ORIENTATION = 0x0112


def downscaled(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    """``image`` with its longer side at most ``side`` (PIL's bilinear thumbnail)."""
    from PIL import Image

    pil = Image.fromarray(image)
    pil.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.array(pil)


@dataclass
class PhotoFolder:
    root: Path
    upright: Dict[str, np.ndarray] = field(default_factory=dict)  # name -> expected decoded RGB array
    corrupt: str = "broken.jpg"

    @property
    def top_level(self):
        return [n for n in self.upright if "/" not in n]


def photo_folder(root: Path, *, subfolder: bool = True) -> PhotoFolder:
    """Write the photos under ``root``; returns each readable image's expected decoded RGB array."""
    import skimage.data as data
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    folder = PhotoFolder(root)

    astronaut = downscaled(data.astronaut())
    Image.fromarray(astronaut).save(root / "astronaut.png")
    folder.upright["astronaut.png"] = astronaut

    coffee = downscaled(data.coffee())
    Image.fromarray(coffee).save(root / "coffee.jpg", quality=95)
    with Image.open(root / "coffee.jpg") as jpeg:
        folder.upright["coffee.jpg"] = np.array(jpeg.convert("RGB"))

    camera = downscaled(data.camera())  # grayscale: channels replicated
    Image.fromarray(camera).save(root / "camera.png")
    folder.upright["camera.png"] = np.repeat(camera[..., None], 3, axis=2)

    logo = downscaled(data.logo())  # RGBA: alpha dropped
    Image.fromarray(logo).save(root / "logo.png")
    folder.upright["logo.png"] = logo[..., :3]

    moon16 = downscaled(data.moon()).astype(np.uint16) * 256 + 64  # 16-bit: scaled back by 255/65535
    Image.fromarray(moon16).save(root / "moon16.png")
    folder.upright["moon16.png"] = np.repeat(np.round(moon16 * (255 / 65535)).astype(np.uint8)[..., None], 3, 2)

    # A phone photo: pixels stored sideways, EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    rocket = downscaled(data.rocket())
    stored = Image.fromarray(rocket).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(root / "rocket_exif.jpg", quality=95, exif=exif.tobytes())
    with Image.open(root / "rocket_exif.jpg") as jpeg:
        raw = np.asarray(jpeg.convert("RGB"))
    folder.upright["rocket_exif.jpg"] = np.ascontiguousarray(np.rot90(raw, k=-1))  # clockwise
    assert folder.upright["rocket_exif.jpg"].shape == rocket.shape

    if subfolder:
        (root / "more").mkdir()
        chelsea = downscaled(data.chelsea())
        Image.fromarray(chelsea).save(root / "more" / "chelsea.png")
        folder.upright["more/chelsea.png"] = chelsea

    (root / folder.corrupt).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + bytes(range(256)))
    (root / "notes.txt").write_text("not an image: folders skip it by extension\n")
    return folder
