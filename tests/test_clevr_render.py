"""The renderer: shapes, materials, colours, depth order, shadows, masks, determinism."""
import json

import numpy as np
import pytest

from clevr_gen.camera import CAMERA_LOCATION, LIGHT_LOCATIONS, Camera
from clevr_gen.pipeline import make_scene
from clevr_gen.render import render
from clevr_gen.spec import DatasetSpec

W, H = 64, 48


def scene_of(*objects):
    return {"camera": {"location": list(CAMERA_LOCATION)},
            "lights": {k: {"location": list(v)} for k, v in LIGHT_LOCATIONS.items()},
            "objects": [dict(o) for o in objects]}


def obj(shape="sphere", color="red", material="rubber", xy=(0.0, 0.0), size=0.7, rotation=0.0):
    z = size / np.sqrt(2) if shape == "cube" else size
    return {"shape": shape, "color": color, "material": material,
            "3d_coords": [xy[0], xy[1], z], "rotation": rotation}


def test_output_shape_any_size():
    spec = DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0)
    scene = make_scene(spec, 0, 1, 0).scene
    for w, h in ((80, 80), (48, 32), (30, 60)):
        img, ids = render(scene, w, h)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert ids.shape == (h, w) and ids.dtype == np.int16


@pytest.mark.parametrize("shape", ["sphere", "cube", "cylinder"])
def test_each_shape_is_drawn_where_the_camera_projects_it(shape):
    img, ids = render(scene_of(obj(shape, rotation=30)), W, H)
    mask = ids == 0
    assert mask.sum() > 50
    cx, cy, _ = Camera(np.array(CAMERA_LOCATION), W, H).project(np.array([0, 0, 0.5]))
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - cx) < 3 and abs(ys.mean() - cy) < 4


def test_metal_is_shinier_than_rubber():
    rub, ids_r = render(scene_of(obj("sphere", "blue", "rubber")), W, H)
    met, ids_m = render(scene_of(obj("sphere", "blue", "metal")), W, H)
    assert np.array_equal(ids_r, ids_m)
    m = ids_r == 0
    lum_r = rub[m].astype(float).mean(axis=1)
    lum_m = met[m].astype(float).mean(axis=1)
    assert lum_m.max() > lum_r.max() + 40  # a specular highlight
    assert lum_m.std() > lum_r.std() * 1.3  # more contrast across the surface
    assert np.abs(rub[m].astype(int) - met[m].astype(int)).mean() > 10


@pytest.mark.parametrize("color,channel", [("red", 0), ("green", 1), ("blue", 2)])
def test_colours_show(color, channel):
    img, ids = render(scene_of(obj("cube", color, "rubber", rotation=20)), W, H)
    mean = img[ids == 0].astype(float).mean(axis=0)
    assert mean.argmax() == channel
    assert mean[channel] > 1.3 * np.delete(mean, channel).max()


def test_all_colours_distinct():
    from clevr_gen.vocab import COLORS
    means = []
    for c in COLORS:
        img, ids = render(scene_of(obj("sphere", c)), W, H)
        means.append(img[ids == 0].astype(float).mean(axis=0))
    means = np.array(means)
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert d[~np.eye(len(COLORS), dtype=bool)].min() > 15


def test_nearer_object_occludes_farther_one():
    cam = np.array(CAMERA_LOCATION)
    toward = cam[:2] / np.linalg.norm(cam[:2])
    near = obj("sphere", "red", xy=tuple(toward * 1.6))
    far = obj("cube", "blue", xy=(0.0, 0.0))
    _, ids_alone = render(scene_of(far), W, H)
    img, ids = render(scene_of(far, near), W, H)
    assert (ids == 0).sum() < 0.8 * (ids_alone == 0).sum()  # far object partly hidden
    assert ((ids_alone == 0) & (ids == 1)).sum() > 20  # by the near one
    # perspective: the same object farther away covers fewer pixels
    _, ids_back = render(scene_of(obj("cube", "blue", xy=tuple(-toward * 2.5))), W, H)
    assert (ids_back == 0).sum() < (ids_alone == 0).sum()


def test_ground_shadow_falls_away_from_the_key_light():
    empty, _ = render(scene_of(), W, H)
    img, ids = render(scene_of(obj("cylinder", "gray")), W, H)
    darker = (empty.astype(int) - img.astype(int)).mean(axis=2) > 12
    shadow = darker & (ids < 0)
    assert shadow.sum() > 15
    cam = Camera(np.array(CAMERA_LOCATION), W, H)
    key_px = cam.project(np.array(LIGHT_LOCATIONS["key"]))[:2]
    obj_px = cam.project(np.array([0, 0, 0.0]))[:2]
    ys, xs = np.nonzero(shadow)
    shadow_dir = np.array([xs.mean(), ys.mean()]) - obj_px
    assert shadow_dir @ (key_px - obj_px) < 0  # on the far side from the light


def test_masks_agree_with_rendered_pixels():
    spec = DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0, width=W, height=H)
    for i in range(3):
        scene = make_scene(spec, i, 1, 1).scene
        img, ids = render(scene, W, H)
        for k in range(len(scene["objects"])):
            without = dict(scene, objects=[o for j, o in enumerate(scene["objects"]) if j != k])
            img2, _ = render(without, W, H)
            changed = np.abs(img.astype(int) - img2.astype(int)).max(axis=2) > 3
            mask = ids == k
            assert changed[mask].mean() > 0.9  # the object's pixels are the object's


def test_rerender_from_json_is_byte_identical_and_antialiased():
    spec = DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0)
    res = make_scene(spec, 3, 0, 1)
    scene = json.loads(json.dumps(res.scene))
    img, ids = render(scene, spec.width, spec.height)
    assert np.array_equal(img, res.image) and np.array_equal(ids, res.object_ids)
    aliased, _ = render(scene, spec.width, spec.height, supersample=1)
    assert not np.array_equal(aliased, img)
    # supersampling makes intermediate edge colours: more distinct colours than without
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > len(np.unique(aliased.reshape(-1, 3), axis=0))


def test_sphere_mask_area_matches_its_projection():
    """A sphere's silhouette is the cone from the eye tangent to it, cut by the image plane: an
    ellipse of area pi f^2 sin^2(a) cos(a) / (cos^2(t) - sin^2(a))^1.5 pixels (f: focal length in
    pixels, a: the cone's half-angle, t: its axis' angle to the view axis)."""
    w = h = 160
    for xy, r in [((0.0, 0.0), 0.7), ((2.0, -1.0), 0.35), ((1.5, 2.0), 0.7)]:
        _, ids = render(scene_of(obj("sphere", xy=xy, size=r)), w, h, supersample=4)
        cam = Camera(np.array(CAMERA_LOCATION), w, h)
        f = w / 2 / cam.tan_half_fov[0]
        to_centre = np.array([*xy, r]) - cam.location
        dist = np.linalg.norm(to_centre)
        sin_a = r / dist
        cos_t = to_centre @ cam.forward / dist
        cos_a = np.sqrt(1 - sin_a ** 2)
        expected = np.pi * f ** 2 * sin_a ** 2 * cos_a / (cos_t ** 2 - sin_a ** 2) ** 1.5
        assert (ids == 0).sum() == pytest.approx(expected, rel=0.03)


def test_pixels_away_from_objects_and_shadows_show_the_bare_ground():
    empty, empty_ids = render(scene_of(), W, H)
    assert (empty_ids == -1).all()
    # A cube at the back left: it and its shadow (cast away from the key light, further back)
    # stay in the upper half of the image.
    img, ids = render(scene_of(obj("cube", "gray", "metal", xy=(-2.5, 2.5), rotation=10)), W, H)
    assert (ids == 0).sum() > 20 and not np.array_equal(img[:H // 2], empty[:H // 2])
    assert (ids[H // 2:] == -1).all()
    assert np.array_equal(img[H // 2:], empty[H // 2:])  # bit for bit


def test_trace_reusing_buffers_equals_a_fresh_trace():
    from clevr_gen.render import SceneGeometry, object_map, shade, trace
    spec = DatasetSpec(n=10, p_x=0.5, p_y=0.5, corr=0.0, width=W, height=H)
    a, b = (SceneGeometry.from_scene(make_scene(spec, i, 1, 0).scene) for i in (0, 1))
    fresh = trace(a, W, H)
    image, (ids, visible) = shade(fresh), object_map(fresh)
    reused = trace(a, W, H, reuse=trace(b, W, H, reuse=trace(a, W, H)))
    assert np.array_equal(shade(reused), image)
    assert np.array_equal(object_map(reused)[0], ids)
    assert np.array_equal(object_map(reused)[1], visible)
