"""Stand-in for torchvision in the MONAI Label environment.

MONAI Label 0.8.5 imports ``torchvision.utils.make_grid`` and ``save_image`` when it starts; the PyPI torchvision
wheel is built against CUDA and fails to import next to a CPU torch. Bundle inference and training never call
these two functions, so ``make label-env`` installs this stub instead of torchvision.
"""

__version__ = "0.0.0+stub"
