"""The notices outbox and what reads it."""

from renkei.outputs.notice import Notice, NoticeError, NoticeState
from renkei.outputs.reader import NoticeReader

__all__ = ["Notice", "NoticeError", "NoticeReader", "NoticeState"]
