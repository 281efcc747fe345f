"""The frozen CPU detector's faster step computes what detectron2's does: the separable ROIAlign
backward equals torchvision's, the image-parallel RPN gives detectron2's proposals, the feature
cache returns the backbone's own maps (and keys training's bf16 apart from evaluation's fp32),
the flip-only augmentation, and ``detect bench --data`` timing batches from the training loader."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from detection import build_config
from detection.feature_cache import FeatureCache, cached_forward
from detection.roi_align import SeparableBackwardROIPooler, roi_align_input_grad
from revtransfer.cli import main

TINY = "model.backbone.net.model_kwargs={patch_size:4,embed_dim:32,depth:1,num_heads:2,img_size:32}"


def _rois(n, size, seed, batch=3, big=20.0):
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, batch, (n, 1), generator=g).float()
    xy = torch.rand(n, 2, generator=g) * size * 1.1 - 3  # some boxes cross or leave the map
    wh = torch.rand(n, 2, generator=g) * big + 0.1
    return torch.cat([b, xy, xy + wh], 1)


@pytest.mark.parametrize("scale,out,sampling,aligned", [(0.5, 7, 0, True), (0.25, 14, 0, True), (0.125, 7, 2, False),
                                                         (1.0, 5, 0, False), (0.5, (7, 5), 3, True)])
def test_separable_roi_align_backward_is_torchvisions(scale, out, sampling, aligned):
    torch.manual_seed(0)
    ph, pw = (out, out) if isinstance(out, int) else out
    shape = (3, 6, 11, 13)  # non-square maps: rows and columns are not mixed up
    rois = _rois(40, 13 / scale, seed=1)
    rois[0, 3:] = rois[0, 1:3]  # an empty roi
    grad = torch.randn(40, shape[1], ph, pw)
    ref = torch.ops.torchvision._roi_align_backward(grad, rois, scale, ph, pw, *shape, sampling, aligned)
    ours = roi_align_input_grad(grad, rois, scale, sampling, aligned, shape)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    assert roi_align_input_grad(grad[:0], rois[:0], scale, sampling, aligned, shape).abs().sum() == 0


def test_the_pooler_gives_detectron2s_output_and_gradients_under_autocast():
    torch.manual_seed(0)
    args = dict(output_size=7, scales=(1 / 4, 1 / 8), sampling_ratio=0, pooler_type="ROIAlignV2",
                canonical_box_size=32, canonical_level=2)
    ref, ours = ROIPooler(**args), SeparableBackwardROIPooler(**args)
    feats = [torch.randn(2, 4, 16, 16, requires_grad=True), torch.randn(2, 4, 8, 8, requires_grad=True)]
    boxes = [Boxes(_rois(12, 64, seed=s, batch=1, big=40)[:, 1:].clamp(0, 63)) for s in (2, 3)]
    for autocast in (False, True):
        outs, grads = [], []
        for pooler in (ref, ours):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = pooler(feats, boxes)
            g = torch.autograd.grad((y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(), feats)
            outs.append(y.float())
            grads.append(g)
        assert torch.equal(outs[0], outs[1])  # the forward is torchvision's
        for a, b in zip(*grads):
            assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=1e-5, rtol=1e-5)


def test_the_image_parallel_rpn_selects_detectron2s_proposals(monkeypatch):
    from detectron2.config import instantiate
    from detectron2.modeling.proposal_generator.rpn import RPN
    from detectron2.utils.events import EventStorage

    import detection.rpn as rpn_mod
    from detection.bench import synthetic_batch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the threaded path, whatever the machine
    submitted = []
    pool = rpn_mod._pool()

    class Spy:
        def submit(self, fn, *args):
            submitted.append(args)
            return pool.submit(fn, *args)

    monkeypatch.setattr(rpn_mod, "_pool", lambda: Spy())
    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu", overrides=[TINY])
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    assert type(model.proposal_generator).__name__ == "ImageParallelRPN"
    batch = synthetic_batch(5, 80, 3, seed=1)
    images = model.preprocess_image(batch)
    feats = model.backbone(images.tensor)
    gt = [b["instances"] for b in batch]
    out = []
    for cls in (type(model.proposal_generator), RPN):
        model.proposal_generator.__class__ = cls
        torch.manual_seed(1)  # the anchor sampling draws
        with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(model.proposal_generator(images, feats, gt))
    (p_ours, l_ours), (p_ref, l_ref) = out
    assert len(submitted) == 2  # two halves of the batch, on the pool
    assert len(p_ours) == len(p_ref) == 5
    for a, b in zip(p_ours, p_ref):
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)
    assert l_ours.keys() == l_ref.keys() and all(torch.equal(l_ours[k], l_ref[k]) for k in l_ours)


def test_the_feature_cache_returns_the_backbones_maps():
    calls = []

    def backbone(x):
        calls.append(len(x))
        return x.mean(1, keepdim=True) * 2

    cache = FeatureCache(max_bytes=2**20)
    a, b, c = (torch.full((3, 4, 4), float(v)) for v in (1, 2, 3))
    first = cached_forward(cache, torch.stack([a, b]), backbone, "off")
    again = cached_forward(cache, torch.stack([b, c, a]), backbone, "off")
    assert calls == [2, 1]  # only c was new
    assert torch.equal(again, backbone(torch.stack([b, c, a])))
    assert torch.equal(first[0], again[2])
    assert cache.stats["hits"] == 2 and cache.stats["misses"] == 3
    cached_forward(cache, torch.stack([a]), backbone, "torch.bfloat16")  # another precision: another entry
    assert calls[-1] == 1 and len(cache) == 4


def test_the_feature_cache_stays_within_its_bound():
    cache = FeatureCache(max_bytes=3 * 16 * 4)  # three 4x4 float maps
    for v in range(5):
        cached_forward(cache, torch.full((1, 1, 4, 4), float(v)), lambda x: x[:, 0], "off")
    assert len(cache) == 3 and cache.nbytes <= cache.max_bytes
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(0)


def test_a_cached_frozen_backbone_is_the_same_function():
    from detectron2.config import instantiate

    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu",
                       overrides=[TINY, "model.backbone.net.feature_cache_mb=16"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.backbone.net)
    x = torch.randn(3, 3, 32, 32)
    plain = net._feature_map(x)
    for _ in range(2):  # a miss, then a hit
        assert torch.allclose(net(x)["last_feat"], plain, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training's precision: its own entries
        assert torch.equal(net(x)["last_feat"], net._feature_map(x))
    assert net.feature_cache.stats["hits"] == 3 and net.feature_cache.stats["misses"] == 6
    changed = {k: v + 1 for k, v in net.state_dict().items()}  # a checkpoint loaded after maps were cached
    net.load_state_dict(changed)
    assert len(net.feature_cache) == 0 and torch.allclose(net(x)["last_feat"], net._feature_map(x), atol=1e-6)
    trainable = instantiate(cfg.model.backbone.net)
    trainable._set_frozen(False)
    trainable.frozen = False
    trainable(x)
    assert len(trainable.feature_cache) == 0  # a trainable backbone is never cached


def test_flip_only_augmentation_and_the_image_size_follow_the_config():
    from detectron2.config import instantiate

    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu", image_size=64)
    augs = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert augs[1].target_height == 64 and tuple(augs[2].crop_size) == (64, 64)
    flips = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu", image_size=64,
                         overrides=["dataloader.train.mapper.augmentations.scale_range=null"])
    augs = instantiate(flips.dataloader.train.mapper.augmentations)
    assert [type(a).__name__ for a in augs] == ["RandomFlip", "ResizeShortestEdge"]
    import detectron2.data.transforms as T
    import numpy as np

    rng = np.random.default_rng(0)
    for side in (64, 80):  # scenes at the detection size pass unchanged (or flipped); others are resized to it
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        aug = T.AugInput(image)
        T.AugmentationList(augs[1:])(aug)
        assert aug.image.shape[:2] == (64, 64)
        if side == 64:
            assert np.array_equal(aug.image, image)


def test_bench_times_batches_from_the_training_loader(clevr_coco, tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["detect", "bench", "--config", "clevr_mask_rcnn_vit_micro_frozen", "--data",
                                    str(clevr_coco), "--no-compare-unfrozen", "--batch-size", "2", "--iters", "1",
                                    "--warmup", "1", "--device", "cpu", "--image-size", "32", "--out", str(out),
                                    TINY, "dataloader.train.num_workers=0"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["meta"]["inputs"].startswith("training loader on")
    rec = doc["records"][0]
    assert rec["data_s"] >= 0 and rec["total_s"] >= rec["data_s"]


def test_batched_inference_gives_the_per_image_detections():
    from detectron2.config import instantiate

    from detection.bench import synthetic_batch

    cfg = build_config("clevr_mask_rcnn_vit_micro_frozen", device="cpu", overrides=[TINY])
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    batch = [{k: v for k, v in d.items() if k != "instances"} for d in synthetic_batch(3, 80, 3, seed=2)]
    with torch.no_grad():
        together = model(batch)
        alone = [model([d])[0] for d in batch]
    for a, b in zip(together, alone):
        a, b = a["instances"], b["instances"]
        assert len(a) == len(b) > 0
        assert torch.allclose(a.scores, b.scores, atol=1e-4)
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, atol=1e-3)


def test_the_roi_align_backward_runs_inside_autocast_and_in_float64():
    from detectron2.layers import ROIAlign as D2ROIAlign

    from detection.roi_align import ROIAlign

    torch.manual_seed(0)
    rois = _rois(30, 40, seed=4, big=60.0)  # big rois: adaptive grids of 4 and more samples a side
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        x = torch.randn(3, 4, 10, 12, dtype=dtype, requires_grad=True)
        grads = []
        for layer in (D2ROIAlign((7, 7), 0.25, 0, True), ROIAlign((7, 7), 0.25, 0, True)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float64):
                y = layer(x, rois)
                (g,) = torch.autograd.grad((y.float() ** 2).sum(), x)  # backward inside autocast
            grads.append(g)
        tol = 1e-12 if dtype == torch.float64 else 1e-2 if dtype == torch.bfloat16 else 1e-5
        assert grads[0].dtype == grads[1].dtype == dtype
        assert torch.allclose(grads[0].double(), grads[1].double(), atol=tol, rtol=tol), dtype


def test_resumed_optimizer_moments_take_their_parameters_layout():
    from detection.train_net import match_optimizer_state_layout

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3)
    ref = torch.nn.Conv2d(4, 4, 3)
    ref.load_state_dict(conv.state_dict())
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1)
    x = torch.randn(2, 4, 6, 6)
    for m, o in ((conv, opt), (ref, ref_opt)):
        m(x).square().sum().backward()
        o.step()
        o.zero_grad()
    saved = opt.state_dict()  # moments in NCHW
    conv.to(memory_format=torch.channels_last)  # resumed under train.channels_last
    opt = torch.optim.AdamW(conv.parameters(), lr=0.1, fused=True)
    opt.load_state_dict(saved)
    match_optimizer_state_layout(opt)
    assert all(v.stride() == p.stride() for p in conv.parameters() for v in opt.state[p].values() if v.dim() > 1)
    for m, o in ((conv, opt), (ref, ref_opt)):
        m(x).square().sum().backward()
        o.step()
    assert torch.allclose(conv.weight, ref.weight, atol=1e-5)
