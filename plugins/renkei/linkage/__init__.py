"""The linked mart: set-based SQL over staging, one row per ERK."""
