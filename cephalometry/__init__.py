"""Cephalometric analyses computed from a landmark result."""
