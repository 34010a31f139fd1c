"""Methods without distillation components: plain cross-entropy and label smoothing."""

from __future__ import annotations

from .registry import register_preset

register_preset("ce", [], summary="cross-entropy (the baseline)",
                paper='none',
                reference='none')
register_preset("ls", [], {"label_smoothing": 0.1}, summary="cross-entropy with label smoothing 0.1",
                paper='Szegedy et al.: Rethinking the Inception Architecture for Computer Vision (CVPR 2016)',
                reference="none (torch's cross_entropy label_smoothing)")
