"""Departmental source connectors: SQL tables, CSV drops (UTF-8/CP932, 和暦 dates), watermarks."""
