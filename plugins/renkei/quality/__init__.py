"""Validation with Great Expectations suites and quarantine."""
