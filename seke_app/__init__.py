"""SEKE: self-verifying, knowledge-enhanced facial-emotion dataset generation."""

__version__ = "0.1.0"
