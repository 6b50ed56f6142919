import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from localedit.bundled.synthetic import GENERATOR_VERSION
from localedit.core.regions import (
    PRESETS,
    Region,
    RegionOverlapWarning,
    box,
    complement,
    from_mask_image,
    load_presets,
    resolve_regions,
    validate_regions,
)


def _save_mask(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_box_pixel_coordinates():
    r = box("b", 2, 3, 5, 7, size=8)
    expected = torch.zeros(8, 8)
    expected[2:5, 3:7] = 1
    assert torch.equal(r.mask, expected)
    assert r.mask.dtype == torch.float32
    assert r.fraction == 12 / 64


def test_box_relative_coordinates_round_outwards():
    assert torch.equal(box("r", 0.25, 0.25, 0.75, 0.5, size=8, relative=True).mask, box("p", 2, 2, 6, 4, size=8).mask)
    # 0.26 * 8 = 2.08 and 0.74 * 8 = 5.92: the box grows to whole pixels rather than shrinking.
    assert torch.equal(box("r", 0.26, 0.26, 0.74, 0.74, size=8, relative=True).mask, box("p", 2, 2, 6, 6, size=8).mask)
    # Float noise (0.3 * 10 = 3.0000000000000004) must not add a row.
    assert box("r", 0.0, 0.0, 0.3, 1.0, size=10, relative=True).mask.sum() == 30


@pytest.mark.parametrize(
    "coords, relative",
    [((0, 0, 9, 4), False), ((-1, 0, 4, 4), False), ((0, 0, 0.5, 1.2), True), ((-0.1, 0, 0.5, 0.5), True)],
)
def test_box_out_of_bounds(coords, relative):
    with pytest.raises(ValueError, match="out of bounds"):
        box("b", *coords, size=8, relative=relative)


def test_box_empty_and_fractional_pixels():
    with pytest.raises(ValueError, match="empty box"):
        box("b", 4, 0, 4, 8, size=8)
    with pytest.raises(ValueError, match="empty box"):
        box("b", 0, 5, 8, 3, size=8)
    with pytest.raises(ValueError, match="not an integer"):
        box("b", 0.5, 0, 4, 4, size=8)


def test_region_rejects_non_binary_masks():
    with pytest.raises(ValueError, match="0 or 1"):
        Region("soft", torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="2-D"):
        Region("flat", torch.ones(16))


def test_from_mask_image(tmp_path):
    mask = np.zeros((8, 8))
    mask[1:3, 2:6] = 255
    _save_mask(tmp_path / "m.png", mask)
    r = from_mask_image("m", tmp_path / "m.png", size=8)
    assert torch.equal(r.mask, torch.from_numpy(mask == 255).float())

    _save_mask(tmp_path / "big.png", np.zeros((16, 16)))
    with pytest.raises(ValueError, match="16x16 pixels; expected 8x8"):
        from_mask_image("big", tmp_path / "big.png", size=8)

    _save_mask(tmp_path / "grey.png", np.full((8, 8), 128))
    with pytest.raises(ValueError, match="not binary"):
        from_mask_image("grey", tmp_path / "grey.png", size=8)

    (tmp_path / "junk.png").write_text("not a png")
    with pytest.raises(ValueError, match="cannot read"):
        from_mask_image("junk", tmp_path / "junk.png", size=8)


def test_validate_regions_errors():
    ok = box("ok", 0, 0, 2, 2, size=8)
    with pytest.raises(ValueError, match="'none': mask is empty"):
        validate_regions([ok, Region("none", torch.zeros(8, 8))], 8)
    with pytest.raises(ValueError, match="'small': mask is 4x4 but the images are 8x8"):
        validate_regions([ok, Region("small", torch.ones(4, 4))], 8)
    with pytest.raises(ValueError, match="duplicate region name 'ok'"):
        validate_regions([ok, box("ok", 4, 4, 6, 6, size=8)], 8)


def test_presets_match_the_generator_layout():
    data = json.loads(PRESETS.read_text())
    assert data["layout"] == GENERATOR_VERSION
    assert set(load_presets()) == {"eyes", "left_eye", "right_eye", "mouth", "hair"}
    # The measured boxes at 32 px (see the description in data/regions.json).
    expected = {"eyes": (10, 6, 17, 26), "left_eye": (10, 6, 17, 16), "right_eye": (10, 16, 17, 26),
                "mouth": (20, 10, 28, 22), "hair": (0, 4, 11, 28)}
    for name, coords in expected.items():
        [region] = resolve_regions(name, 32)
        assert torch.equal(region.mask, box(name, *coords, size=32).mask), name
        # Relative coordinates: the same layout at twice the resolution.
        [big] = resolve_regions([name], 64)
        assert torch.equal(big.mask, region.mask.repeat_interleave(2, 0).repeat_interleave(2, 1)), name
    left, right, eyes = (resolve_regions(n, 32)[0].mask for n in ("left_eye", "right_eye", "eyes"))
    assert torch.equal(left + right, eyes)


def test_unknown_preset_lists_the_available_names():
    with pytest.raises(ValueError, match=r"\['nose'\].*available: eyes, left_eye, right_eye, mouth, hair"):
        resolve_regions("eyes, nose", 32)
    with pytest.raises(ValueError, match="no regions"):
        resolve_regions(" , ", 32)


def test_overlap_warns_but_disjoint_does_not():
    with pytest.warns(RegionOverlapWarning, match=r"'eyes' and 'left_eye' overlap on 70 px \(100% of 'left_eye'\)"):
        regions = resolve_regions("eyes,left_eye", 32)
    assert [r.name for r in regions] == ["eyes", "left_eye"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_regions("eyes,mouth", 32)
        resolve_regions(["left_eye", "right_eye", "mouth"], 32)


def test_complement():
    a, b = box("a", 0, 0, 4, 8, size=8), box("b", 2, 0, 6, 4, size=8)
    rest = complement([a, b], 8)
    assert rest.name == "rest"
    assert torch.equal(rest.mask, 1 - torch.maximum(a.mask, b.mask))
    assert rest.fraction == 1 - (32 + 8) / 64
    with pytest.raises(ValueError, match="whole image"):
        complement([box("all", 0, 0, 8, 8, size=8)], 8)


def test_regions_json_file_with_mask_png(tmp_path):
    blob = np.zeros((8, 8))
    blob[5:7, 1:3] = 255
    _save_mask(tmp_path / "masks" / "blob.png", blob)
    spec = {
        "layout": "custom",
        "regions": {
            "top": {"box": [0, 0, 0.25, 1], "relative": True},
            "corner": {"box": [6, 6, 8, 8]},
            "blob": {"mask": "masks/blob.png"},
        },
    }
    path = tmp_path / "my_regions.json"
    path.write_text(json.dumps(spec))
    for given in (path, str(path)):
        top, corner, blob_region = resolve_regions(given, 8)
        assert top.mask[:2].all() and top.mask.sum() == 16
        assert torch.equal(corner.mask, box("c", 6, 6, 8, 8, size=8).mask)
        assert torch.equal(blob_region.mask, torch.from_numpy(blob == 255).float())

    spec["regions"]["bad"] = {"box": [0, 0, 1, 1], "mask": "masks/blob.png"}
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="exactly one of 'box' or 'mask'"):
        resolve_regions(path, 8)
    spec["regions"]["bad"] = {"box": [0, 0, 1, 1], "relativ": True}
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_regions(path, 8)
