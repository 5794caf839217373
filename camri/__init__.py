"""camri: reproducibility package for the CAMRI loss (Nishiyama et al., IJCNN 2022)."""

__version__ = "0.1.0"
