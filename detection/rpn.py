"""An RPN whose proposal selection uses both CPU cores.

detectron2's ``find_top_rpn_proposals`` selects each image's proposals on its own (top-k per
level, clipping, NMS per level): a loop over images of single-threaded kernels, a tenth of the
frozen CPU detector's step. :class:`ImageParallelRPN` runs it on the two halves of the batch in two
threads (torchvision's NMS releases the GIL) and concatenates their results: the same proposals,
in the same order. Elsewhere (a GPU, one image, one thread) it is detectron2's RPN.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.proposal_generator.rpn import RPN

from revtransfer.reversible.state import autocast_query


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="rpn-proposals")


def _autocast_context(enabled: bool, dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype) if enabled else contextlib.nullcontext()


class ImageParallelRPN(RPN):
    """detectron2's ``RPN``; on a CPU with two or more threads, proposals of the batch's two halves
    are selected in parallel."""

    def predict_proposals(self, anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes):
        n = len(image_sizes)
        if (n < 2 or pred_objectness_logits[0].device.type != "cpu" or torch.get_num_threads() < 2
                or torch.jit.is_tracing()):
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        with torch.no_grad():
            proposals = self._decode_proposals(anchors, pred_anchor_deltas)
        # autocast is thread-local: each worker enters the caller's state in a context of its own
        enabled, dtype = autocast_query("cpu")

        def select(part: slice):
            with torch.no_grad(), _autocast_context(enabled, dtype):
                return find_top_rpn_proposals(
                    [p[part] for p in proposals], [s[part] for s in pred_objectness_logits], image_sizes[part],
                    self.nms_thresh, self.pre_nms_topk[self.training], self.post_nms_topk[self.training],
                    self.min_box_size, self.training)

        halves = (slice(0, n // 2), slice(n // 2, n))
        futures = [_pool().submit(select, h) for h in halves]
        return [inst for f in futures for inst in f.result()]
