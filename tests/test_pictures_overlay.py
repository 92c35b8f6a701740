"""The overlay drawing on its own: regions, sizes from 360p to 4K, trails, missing outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from picture_inputs import varied_row

from affstream.labels import EXPR_LABELS
from affstream.pictures.overlay import OverlayScale, TrailKeeper, draw_overlay
from affstream.pictures.palette import EXPR_COLOURS, TRACK_COLOURS, cividis_hex, rgb
from affstream.records import FrameAnnotation


def face(track: int, box, time_s: float = 0.5) -> FrameAnnotation:
    row = FrameAnnotation(
        frame_index=1, time_s=time_s, track_id=track, confidence=0.99, success=True, box_xyxy=np.asarray(box, dtype=np.float32)
    )
    return varied_row(row, time_s)


def noisy(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def region_mask(shape, regions) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in regions:
        mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080), (3840, 2160), (1080, 1920), (161, 121)])
def test_pixels_change_only_inside_even_aligned_regions(size):
    width, height = size
    image = noisy(height, width)
    s = min(width, height) / 360
    faces = TrailKeeper().update(0.5, [face(0, (80 * s, 60 * s, 220 * s, 240 * s)), face(3, (400 * s, 50 * s, 520 * s, 200 * s))])
    drawn, regions = draw_overlay(image, faces)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert regions
    for x0, y0, x1, y1 in regions:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        # even corners (or the frame's own odd edge): 2x2 chroma blocks never straddle a region edge
        assert x0 % 2 == 0 and y0 % 2 == 0
        assert x1 % 2 == 0 or x1 == width
        assert y1 % 2 == 0 or y1 == height
    changed = (drawn != image).any(axis=-1)
    assert changed.any()
    assert not (changed & ~region_mask(image.shape, regions)).any()
    # the face inside its box is not painted over
    inner = (slice(round(100 * s), round(200 * s)), slice(round(100 * s), round(200 * s)))
    assert not changed[inner].any()


def test_no_faces_returns_the_input_untouched():
    image = noisy(90, 160)
    drawn, regions = draw_overlay(image, [])
    assert drawn is image and regions == []


def test_sizes_scale_with_the_frame():
    small, full_hd, uhd = (OverlayScale.for_frame(w, h) for w, h in ((640, 360), (1920, 1080), (3840, 2160)))
    assert small.unit == 1.0 and uhd.unit == 6.0
    assert small.font_px >= 12 and full_hd.font_px == 3 * small.font_px
    assert uhd.panel_px == pytest.approx(6 * small.panel_px, rel=0.02)
    tiny = OverlayScale.for_frame(160, 90)
    assert tiny.font_px >= 10  # never below legibility


def test_drawn_area_grows_with_the_frame():
    areas = []
    for width, height in ((640, 360), (3840, 2160)):
        s = height / 360
        image = np.zeros((height, width, 3), dtype=np.uint8)
        drawn, _ = draw_overlay(image, TrailKeeper().update(0.0, [face(0, (200 * s, 80 * s, 320 * s, 240 * s))]))
        areas.append((drawn != 0).any(axis=-1).mean())
    assert areas[1] == pytest.approx(areas[0], rel=0.25)  # same share of the picture at 360p and 4K


def test_trail_keeps_the_last_second_and_forgets_gone_faces():
    keeper = TrailKeeper(trail_s=1.0)
    for k in range(60):
        t = k / 30
        overlays = keeper.update(t, [face(0, (10, 10, 50, 50), t)] + ([face(1, (60, 10, 90, 50), t)] if k < 10 else []))
    trail = overlays[0].trail
    assert trail.shape[1] == 2 and 29 <= len(trail) <= 31
    expected = face(0, (10, 10, 50, 50), 59 / 30)
    assert trail[-1] == pytest.approx([expected.valence, expected.arousal])
    assert 1 not in keeper._points  # unseen for over a second


def test_rows_without_some_outputs_still_draw():
    image = noisy(360, 640)
    bare = FrameAnnotation(
        frame_index=1,
        time_s=0.0,
        track_id=2,
        confidence=0.9,
        success=True,
        box_xyxy=np.array([100, 100, 200, 220], dtype=np.float32),
    )
    only_expr = dataclasses.replace(face(1, (300, 100, 400, 220)), valence=None, arousal=None, au_present=None, au_probs=None)
    overlays = TrailKeeper().update(0.0, [bare, only_expr])
    assert len(overlays[0].trail) == 0 and len(overlays[1].trail) == 0
    drawn, regions = draw_overlay(image, overlays)
    assert regions and (drawn != image).any()


def test_boxes_partly_outside_the_frame():
    image = noisy(360, 640)
    faces = TrailKeeper().update(0.0, [face(0, (-40, -30, 90, 120)), face(1, (560, 250, 700, 420))])
    drawn, regions = draw_overlay(image, faces)
    changed = (drawn != image).any(axis=-1)
    assert changed.any() and not (changed & ~region_mask(image.shape, regions)).any()


def test_palette_one_distinct_colour_per_class():
    assert tuple(EXPR_COLOURS) == EXPR_LABELS
    assert len(set(EXPR_COLOURS.values())) == len(EXPR_LABELS)
    assert len(set(TRACK_COLOURS)) == len(TRACK_COLOURS)
    assert rgb("#56B4E9") == (86, 180, 233)
    assert cividis_hex(0.0) == "#00224E" and cividis_hex(1.0) == "#FEE838"
