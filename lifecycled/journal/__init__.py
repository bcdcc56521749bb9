"""The journal: the only code that speaks SQL (SPEC §2, STYLE principle 4)."""

from lifecycled.journal.journal import Journal
from lifecycled.journal.records import OpPage, SubmitRequest, SubmitResult

__all__ = ["Journal", "OpPage", "SubmitRequest", "SubmitResult"]
