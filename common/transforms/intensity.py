"""Checks that an intensity window fits the image it is applied to, before the window clips it to nothing."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from common.data.cases import case_path
from common.errors import InvalidInputError

__all__ = ["CheckIntensityWindowd", "WindowFit", "window_fit"]

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 99.5)  # the image's robust range: what the window sees of 99 % of its voxels
SAMPLE_SIZE = 2**18  # voxels the statistics are estimated from (a fixed random draw): a few ms for any volume
MIN_CONTRAST = 0.01  # below: the robust range fills < 1 % of the window's output, a nearly constant image
MAX_CLIPPED_ONE_END = 0.99  # above: almost every voxel is clipped to the same end, a nearly constant image
WARN_CONTRAST = 0.5  # a non-HU image whose robust range fills under half the output ...
WARN_CLIPPED_ONE_END = 0.25  # ... or that loses over a quarter of its voxels to one end is warned about
HU_REACH = (-50.0, 50.0)  # a CT in Hounsfield units has voxels below (fat, lung, air) and above (soft tissue, bone)


@dataclass(frozen=True)
class WindowFit:
    """How a window ``[lower, upper]`` (clipped, scaled to its output range) treats an image.

    Attributes:
        low, high: the image's 0.5th and 99.5th percentiles (its minimum and maximum when those are equal).
        minimum, maximum: the image's extremes (of the sampled voxels).
        contrast: the fraction of the window's output range that [low, high] covers after windowing, 0..1.
        clipped_below, clipped_above: the fractions of voxels strictly below ``lower`` / above ``upper``.
        hu_like: whether the image reaches below -50 and above 50, as any CT in Hounsfield units does.
    """

    low: float
    high: float
    minimum: float
    maximum: float
    contrast: float
    clipped_below: float
    clipped_above: float
    hu_like: bool

    @property
    def clipped_one_end(self) -> float:
        return max(self.clipped_below, self.clipped_above)


def window_fit(image: torch.Tensor | np.ndarray, window: Sequence[float]) -> WindowFit | None:
    """The statistics of ``image`` (any shape) under ``window``; None for a constant image, which no window helps.

    Images of more than 2**18 voxels are estimated from 2**18 voxels drawn at random with a fixed seed (the global
    random state is left alone): the percentiles and fractions are then within about 0.1 % of the whole image's.
    """
    lower, upper = float(window[0]), float(window[1])
    values = torch.as_tensor(image).detach().reshape(-1)
    if values.numel() > SAMPLE_SIZE:
        generator = torch.Generator().manual_seed(0)
        values = values[torch.randint(values.numel(), (SAMPLE_SIZE,), generator=generator).to(values.device)]
    values = values.to(torch.float64)
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    minimum, maximum = float(values.min()), float(values.max())
    if minimum == maximum:
        return None
    low, high = (float(q) for q in torch.quantile(values, torch.tensor(PERCENTILES, dtype=values.dtype) / 100))
    if low == high:  # a sparse image: more than 99 % of one value
        low, high = minimum, maximum

    def mapped(value: float) -> float:
        return min(max((value - lower) / (upper - lower), 0.0), 1.0)

    return WindowFit(
        low=low,
        high=high,
        minimum=minimum,
        maximum=maximum,
        contrast=mapped(high) - mapped(low),
        clipped_below=float((values < lower).double().mean()),
        clipped_above=float((values > upper).double().mean()),
        hu_like=minimum < HU_REACH[0] and maximum > HU_REACH[1],
    )


class CheckIntensityWindowd(MapTransform):
    """Refuse an image that a fixed intensity window (a CT window in Hounsfield units, e.g. ``hu_window``) would
    turn into a nearly constant image, and warn about one that does not look like HU and fits the window badly.

    Placed right before the windowing (``ScaleIntensityRanged`` with ``a_min``/``a_max`` = the window, ``clip``),
    it measures each image's robust range [low, high] (0.5th and 99.5th percentiles, from at most 2**18 voxels),
    the *contrast* (the fraction of the window's output range [low, high] covers once windowed) and the fraction
    of voxels the window clips to each end (strictly outside it). With the window [-200, 300] (width 500):

    * **error** (:class:`~common.errors.InvalidInputError`, naming the file, the config id and a window that fits)
      when the contrast is under 1 % (``MIN_CONTRAST``) or more than 99 % of the voxels are clipped to one end
      (``MAX_CLIPPED_ONE_END``): 99 % of the image then lies within 1 % of the output (under 2.5 of 255 grey
      levels), nothing a network trained on CT can segment. ACDC's [0, 1] MRI has a contrast of 1/500 = 0.2 %
      (every voxel in 0.400..0.402), and an image lying wholly outside the window has 0 %.
    * **warning** (once per file, logged by this module) when the image does not reach both below -50 and above
      50 (a CT in HU always has fat, lung or air below -50 and soft tissue or bone above 50) and the window fits
      it badly: a contrast under 50 % (``WARN_CONTRAST``) or over 25 % of its voxels clipped to one end
      (``WARN_CLIPPED_ONE_END``). A z-scored MRI in [-5, 5] (contrast 2 %) is warned about; so is raw MRI in
      [0, 1000]: the window keeps its 0..300 part spread over 60 % of the output (a usable, if distorted, image,
      hence no error) but clips the ~70 % of voxels above 300 to one value.
    * silence otherwise: real CT (air about -1000, soft tissue 0..100, bone above 300) has a contrast near 100 %
      and clips well under 99 % (air, typically 30-70 % of a scan, at the lower end); a non-HU image given a
      window that fits it (``[0, 1]`` for ACDC) too. A constant image has no contrast under any window: passed.

    Args:
        keys: the image keys.
        window: (lower, upper) of the window, lower < upper.
        config_id: the config id that sets ``window``, named in the messages (the ``--id`` to change).
        advice: what else the messages suggest, after setting ``--config_id`` to the image's range.
        allow_missing_keys: do not raise for a key absent from the data.
    """

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[float],
        config_id: str = "hu_window",
        advice: str = "or convert the image to Hounsfield units if it is a CT",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ValueError(f"{config_id} must be [lower, upper] with lower < upper, got {list(window)}")
        self.window = (float(window[0]), float(window[1]))
        self.config_id = config_id
        self.advice = advice
        self.warned: set[str] = set()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Mapping[Hashable, torch.Tensor]:
        for key in self.key_iterator(dict(data)):
            fit = window_fit(data[key], self.window)
            if fit is not None:  # the file of a loaded image; a plain array has none (and must not be printed)
                name = case_path(data, key) if isinstance(data[key], MetaTensor) else "<unknown file>"
                self.check(fit, name)
        return data

    def check(self, fit: WindowFit, name: str) -> None:
        """Raise or warn, as the class describes, about the image ``name`` whose statistics are ``fit``."""
        lower, upper = self.window
        if fit.contrast < MIN_CONTRAST or fit.clipped_one_end > MAX_CLIPPED_ONE_END:
            if fit.clipped_one_end > MAX_CLIPPED_ONE_END:
                end = "lower" if fit.clipped_below >= fit.clipped_above else "upper"
                effect = f"clips {fit.clipped_one_end:.1%} of the voxels to its {end} end"
            else:
                effect = f"squeezes 99% of the voxels into {fit.contrast:.1%} of its output range"
            raise InvalidInputError(
                f"{name}: {self._describe(fit)}; the window {self.config_id} [{lower:g}, {upper:g}] {effect}, so the "
                f"windowed image would be nearly constant and meaningless: {self._fix(fit)}"
            )
        if fit.hu_like or (fit.contrast >= WARN_CONTRAST and fit.clipped_one_end <= WARN_CLIPPED_ONE_END):
            return
        if name in self.warned:
            return
        self.warned.add(name)
        logger.warning(
            "%s: %s; the window %s [%g, %g] keeps %.0f%% of its output range for 99%% of the voxels and clips "
            "%.0f%% below and %.0f%% above it; unless that is intended, %s",
            name, self._describe(fit), self.config_id, lower, upper, 100 * fit.contrast,
            100 * fit.clipped_below, 100 * fit.clipped_above, self._fix(fit),
        )  # fmt: skip

    def _describe(self, fit: WindowFit) -> str:
        span = f"this image's intensities span [{fit.low:.4g}, {fit.high:.4g}] (0.5th to 99.5th percentile)"
        if fit.hu_like:
            return span
        if fit.minimum >= HU_REACH[0]:
            return f"{span}, not Hounsfield units (nothing below {HU_REACH[0]:g}: no fat, lung or air)"
        return f"{span}, not Hounsfield units (nothing above {HU_REACH[1]:g}: no soft tissue or bone)"

    def _fix(self, fit: WindowFit) -> str:
        low, high = _rounded_range(fit.low, fit.high)
        example = f'--{self.config_id} "[{low:g},{high:g}]"'
        return f"set --{self.config_id} to the image's range, e.g. {example}, {self.advice}"


def _rounded_range(low: float, high: float) -> tuple[float, float]:
    """[low, high] widened to round numbers at a tenth of its width's order of magnitude: [0.005, 0.995] -> [0, 1]."""
    exponent = math.floor(math.log10(high - low)) - 1 if high > low else 0
    step = 10.0**exponent
    digits = max(0, -exponent)
    return round(math.floor(low / step) * step, digits), round(math.ceil(high / step) * step, digits)
