"""Networks of the bundles that MONAI does not provide."""

from common.networks.sli2vol import EdgeProfile, ResidualEncoder, Sli2VolNet, local_affinity, reconstruct

__all__ = ["EdgeProfile", "ResidualEncoder", "Sli2VolNet", "local_affinity", "reconstruct"]
