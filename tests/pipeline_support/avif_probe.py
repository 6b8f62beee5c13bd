"""Decode AVIF files with Pillow (its own libavif and dav1d/aom: a decoder independent of
ours) for tests/pipeline_avif.rs.

    python avif_probe.py IN.avif OUT.png [IN.avif OUT.png ...]

Writes each image as an RGBA PNG and prints one JSON line per file: the format Pillow
saw, its mode, size, and whether EXIF, XMP or an ICC profile came with it.
"""
import json
import sys

from PIL import Image, features

if not features.check("avif"):
    sys.exit("this Pillow has no AVIF support")
args = sys.argv[1:]
for source, target in zip(args[0::2], args[1::2]):
    with Image.open(source) as im:
        im.load()
        info = {
            "format": im.format,
            "mode": im.mode,
            "size": list(im.size),
            "exif": bool(im.info.get("exif")),
            "xmp": bool(im.info.get("xmp")),
            "icc": bool(im.info.get("icc_profile")),
        }
        im.convert("RGBA").save(target)
    print(json.dumps(info))
