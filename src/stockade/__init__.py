"""Stockade: a secure-by-default, multi-tenant backend for AI applications."""

__version__ = "0.1.0"
