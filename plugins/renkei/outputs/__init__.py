"""The notices outbox and what reads it."""
