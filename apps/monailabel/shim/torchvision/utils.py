"""The two torchvision functions MONAI Label imports; the bundles served here never call them."""


def make_grid(*args, **kwargs):
    raise NotImplementedError("torchvision is a stub in the MONAI Label environment (see apps/monailabel/README.md)")


def save_image(*args, **kwargs):
    raise NotImplementedError("torchvision is a stub in the MONAI Label environment (see apps/monailabel/README.md)")
