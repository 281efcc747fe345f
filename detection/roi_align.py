"""ROIAlign whose CPU backward is two small matrix products per image instead of torchvision's
single-threaded scatter loop (the frozen CPU detector's costliest kernel after the convolutions).

ROIAlign's bilinear sampling is separable: the samples of an output bin lie on a grid
``ys x xs`` and each sample's weight is ``wy(y) * wx(x)`` (zero when either coordinate falls
outside the map, as torchvision's kernel zeroes all four corners then). So a roi's output is
``Ay @ input[b] @ Ax.T / count`` with ``Ay`` (bins x H) and ``Ax`` (bins x W) holding the summed
interpolation weights, and its input gradient is ``Ay.T @ grad @ Ax / count``: dense products that
use both cores, summed per image. The forward stays torchvision's (already multi-threaded), and so
does everything on a GPU. Sample positions, the adaptive grid (``ceil(roi size / bins)``),
``aligned`` and the border rules follow torchvision's ``roi_align_kernel.cpp``; the result equals
its backward up to float summation order (tested).
"""
from __future__ import annotations

import torch
from detectron2.layers import ROIAlign as _D2ROIAlign
from detectron2.modeling.poolers import ROIPooler


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16 / fp16 (as torchvision's autocast runs ROIAlign), else the dtype itself."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _axis_weights(start: torch.Tensor, size: torch.Tensor, bins: int, grid: torch.Tensor | int,
                  length: int) -> torch.Tensor:
    """(R, bins, length): for each roi and bin along one axis, the bilinear weights of its samples
    summed per pixel (torchvision's ``bilinear_interpolate`` along that axis)."""
    r = start.shape[0]
    bin_size = size / bins
    if isinstance(grid, int):
        grid_t = torch.full((r,), grid, dtype=torch.long)
    else:
        grid_t = grid
    g_max = max(int(grid_t.max()) if r else 0, 1)
    i = torch.arange(g_max, dtype=start.dtype)
    p = torch.arange(bins, dtype=start.dtype)
    # y = roi_start + p * bin_size + (i + .5) * bin_size / grid, in the kernel's order of operations
    g = grid_t.clamp(min=1).to(start.dtype)
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
           + (i[None, None, :] + 0.5) * bin_size[:, None, None] / g[:, None, None])
    used = (i[None, None, :] < grid_t[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    top = low >= length - 1
    low = torch.where(top, torch.full_like(low, length - 1), low)
    high = torch.where(top, low, low + 1)
    pos = torch.where(top, low.to(pos.dtype), pos)
    frac = pos - low
    w_low, w_high = (1 - frac) * used, frac * used
    out = torch.zeros(r, bins, length, dtype=start.dtype)
    out.scatter_add_(2, low.reshape(r, bins, -1), w_low.reshape(r, bins, -1))
    out.scatter_add_(2, high.reshape(r, bins, -1), w_high.reshape(r, bins, -1))
    return out


def roi_align_weights(rois: torch.Tensor, spatial_scale: float, pooled: tuple[int, int], sampling_ratio: int,
                      aligned: bool, height: int, width: int):
    """``Ay`` (R, PH, H) and ``Ax`` (R, PW, W), each divided by the sqrt-free split of ``count``:
    ``Ay`` carries ``1 / count`` so that ``Ay @ x @ Ax.T`` is the pooled output."""
    rois = rois.to(_compute_dtype(rois.dtype))
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    w = rois[:, 3] * spatial_scale - offset - x0
    h = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:  # the legacy kernel forces malformed rois to be 1x1
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    ph, pw = pooled
    if sampling_ratio > 0:
        gy = gx = int(sampling_ratio)
        count = torch.full_like(w, float(max(gy * gx, 1)))
    else:
        gy = torch.ceil(h / ph).long().clamp(min=0)
        gx = torch.ceil(w / pw).long().clamp(min=0)
        count = (gy * gx).clamp(min=1).to(rois.dtype)
    ay = _axis_weights(y0, h, ph, gy, height) / count[:, None, None]
    ax = _axis_weights(x0, w, pw, gx, width)
    return ay, ax


def roi_align_input_grad(grad: torch.Tensor, rois: torch.Tensor, spatial_scale: float, sampling_ratio: int,
                         aligned: bool, input_shape: tuple[int, int, int, int]) -> torch.Tensor:
    """d loss / d input of ROIAlign for ``grad`` (R, C, PH, PW): per image, ``sum_r Ay_r.T @ grad_r @ Ax_r``."""
    n, c, h, w = input_shape
    ph, pw = grad.shape[-2:]
    dtype = _compute_dtype(grad.dtype)
    if rois.shape[0] == 0:
        return torch.zeros(n, c, h, w, dtype=dtype)
    batch = rois[:, 0].long()
    order = torch.argsort(batch, stable=True)  # each image's rois one contiguous slice
    rois, grad, batch = rois[order], grad[order], batch[order]
    ay, ax = roi_align_weights(rois, spatial_scale, (ph, pw), sampling_ratio, aligned, h, w)
    ay, ax = ay.to(dtype), ax.to(dtype)
    r = rois.shape[0]
    # grad_r @ Ax_r for every roi: (R, C*PH, PW) @ (R, PW, W), laid out (R, PH, C, W) so that one
    # product per image, (H, R_b*PH) @ (R_b*PH, C*W), sums that image's rois
    g = grad.permute(0, 2, 1, 3).to(dtype).contiguous()  # (R, PH, C, PW): the small tensor is the one moved
    t = torch.bmm(g.view(r, ph * c, pw), ax).view(r * ph, c * w)
    ay_t = ay.permute(2, 0, 1).reshape(h, r * ph)
    out = torch.zeros(n, h, c, w, dtype=dtype)
    counts = torch.bincount(batch, minlength=n).tolist()
    start = 0
    for b, k in enumerate(counts):
        if k:
            torch.mm(ay_t[:, start * ph:(start + k) * ph], t[start * ph:(start + k) * ph], out=out[b].view(h, c * w))
        start += k
    return out.permute(0, 2, 1, 3)


class _ROIAlignFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (spatial_scale, sampling_ratio, aligned, tuple(input.shape), input.dtype)
        dtype = _compute_dtype(input.dtype)
        with torch.autocast("cpu", enabled=False):
            out = torch.ops.torchvision.roi_align(input.to(dtype), rois.to(dtype), spatial_scale, output_size[0],
                                                  output_size[1], sampling_ratio, aligned)
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, sampling_ratio, aligned, shape, dtype = ctx.args
        with torch.autocast("cpu", enabled=False):  # a backward run inside autocast: its products stay in float
            g = roi_align_input_grad(grad, rois, spatial_scale, sampling_ratio, aligned, shape)
        return g.to(dtype), None, None, None, None, None


class ROIAlign(_D2ROIAlign):
    """detectron2's ``ROIAlign`` (same arguments, same rounding of the rois to the input's dtype)
    with the separable backward above on a CPU; on other devices it is detectron2's."""

    def forward(self, input, rois):
        if input.device.type != "cpu" or input.is_quantized or not torch.is_grad_enabled() or not input.requires_grad:
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        size = tuple(self.output_size) if not isinstance(self.output_size, int) else (self.output_size,) * 2
        return _ROIAlignFunction.apply(input, rois.to(dtype=input.dtype), size, float(self.spatial_scale),
                                       int(self.sampling_ratio), bool(self.aligned))


class SeparableBackwardROIPooler(ROIPooler):
    """detectron2's ``ROIPooler`` whose ROIAlign levels use :class:`ROIAlign`'s separable CPU backward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i, level in enumerate(self.level_poolers):
            if type(level) is _D2ROIAlign:
                self.level_poolers[i] = ROIAlign(level.output_size, level.spatial_scale, level.sampling_ratio,
                                                 level.aligned)
