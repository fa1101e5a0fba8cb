"""Networks of the bundles that MONAI does not provide."""

from common.networks.sli2vol import EdgeProfile, ResidualEncoder, Sli2VolNet, local_affinity, reconstruct
from common.networks.xnet import XNet, conv_kernel_l2

__all__ = ["EdgeProfile", "ResidualEncoder", "Sli2VolNet", "XNet", "conv_kernel_l2", "local_affinity", "reconstruct"]
