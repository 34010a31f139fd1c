"""Loss functions, one file per method family: pure tensor functions plus thin modules."""

from .tfd import channel_importance, depth_loss, width_loss
from .tfd_loss import TFDLoss
from .ab import ab_loss, ab_margin_loss
from .at import at_loss, at_pair_loss, attention_map, match_spatial
from .cc import cc_loss, cc_loss_crd, rbf_correlation
from .crd import ContrastMemory, Embed, contrast_scores, nce_loss, sample_contrast_indices
from .fitnet import ConvRegressor, hint_loss
from .fsp import fsp_loss, fsp_matrix
from .ft import Paraphraser, Translator, factor, ft_loss, paraphraser_loss
from .kd import kd_loss
from .nst import nst_loss, nst_pair_loss
from .pkt import pkt_loss
from .rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from .sp import similarity_matrix, sp_loss, sp_pair_loss
from .vid import VIDHead, vid_nll
from .tfd_distance import depth_loss_with, width_loss_with
from .tfkd import tfkd_reg_loss, virtual_teacher
from .pskd import pskd_alpha, pskd_targets, soft_cross_entropy
from .dkd import dkd_loss, dkd_terms
from .dist import dist_loss, dist_terms
from .logit_stand import logit_stand_kd_loss, standardize_logits
from .reviewkd import ABF, ReviewFusion, hcl_loss

__all__ = [
    "TFDLoss", "channel_importance", "depth_loss", "width_loss",
    "ab_loss", "ab_margin_loss", "at_loss", "at_pair_loss", "attention_map", "match_spatial",
    "cc_loss", "cc_loss_crd", "rbf_correlation", "ContrastMemory", "Embed", "contrast_scores", "nce_loss",
    "sample_contrast_indices", "ConvRegressor", "hint_loss", "fsp_loss", "fsp_matrix", "Paraphraser", "Translator",
    "factor", "ft_loss", "paraphraser_loss", "kd_loss", "nst_loss", "nst_pair_loss", "pkt_loss",
    "pairwise_distances", "rkd_angle_loss", "rkd_distance_loss", "similarity_matrix", "sp_loss", "sp_pair_loss",
    "VIDHead", "vid_nll", "depth_loss_with", "width_loss_with", "tfkd_reg_loss", "virtual_teacher", "pskd_alpha",
    "pskd_targets", "soft_cross_entropy",
    "dkd_loss", "dkd_terms", "dist_loss", "dist_terms", "logit_stand_kd_loss", "standardize_logits", "ABF",
    "ReviewFusion", "hcl_loss",
]
