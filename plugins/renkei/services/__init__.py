"""Proactive service rules (data under config/services) and their date arithmetic."""
