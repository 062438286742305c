"""rsd_pl: train and evaluate RSD (RFSQ action tokens + speculative decoding) on LIBERO."""

__version__ = "0.1.0"
