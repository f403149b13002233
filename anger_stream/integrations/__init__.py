"""Adapters for frameworks that embed the detector (each needs its own optional extra)."""
