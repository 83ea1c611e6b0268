"""A synthetic city: the raw departmental tables of SOURCES.md with seeded defects."""

from renkei.synth.build import generate

__all__ = ["generate"]
