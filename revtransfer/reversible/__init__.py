"""The reversible engine: couplings, reversible stacks and their backward schedules.

Generic over the coupling functions F and G; models (ViT, Swin, MViT, RoBERTa) build on it.
"""
from .coupling import ReversibleCoupling
from .refusals import ReversibleUnsupportedError
from .stack import BACKPROP_MODES, ReversibleSequence, ReversibleStack, check_mode, set_backprop_mode
from .state import AutocastState, RNGState

__all__ = [
    "BACKPROP_MODES",
    "AutocastState",
    "RNGState",
    "ReversibleCoupling",
    "ReversibleSequence",
    "ReversibleStack",
    "ReversibleUnsupportedError",
    "check_mode",
    "set_backprop_mode",
]
