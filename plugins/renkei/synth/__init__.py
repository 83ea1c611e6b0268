"""A synthetic city: the raw departmental tables of SOURCES.md with seeded defects."""
