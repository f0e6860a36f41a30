"""edgeseg: make trained SegFormer segmentation models small, fast and verified for edge devices."""

__version__ = "0.1.0"
