"""What a test can check of a drawn figure without a person: how much of it is painted in a given colour."""

from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy


def share_in_colour(png: Path, colour: str, alpha: float = 1.0, tolerance: float = 0.02) -> float:
    """The fraction of the picture's pixels within `tolerance` (per channel, 0-1) of a matplotlib colour, painted
    with opacity `alpha` over white."""
    pixels = matplotlib.image.imread(str(png))[..., :3]
    target = alpha * numpy.array(matplotlib.colors.to_rgb(colour)) + (1.0 - alpha)
    return float((numpy.abs(pixels - target) <= tolerance).all(axis=-1).mean())
