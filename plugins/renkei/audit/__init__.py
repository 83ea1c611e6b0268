"""The tamper-evident audit trail: a keyed hash chain of what the pipeline did."""

from renkei.audit.trail import AuditError, VerifyResult, append, verify

__all__ = ["AuditError", "VerifyResult", "append", "verify"]
