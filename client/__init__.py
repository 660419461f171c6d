"""tinyserve's batch scoring client: `tinyserve-score MODEL INPUT OUTPUT` or `Scorer(...).score_file(...)`."""

from client.backends import ClientFault, ServerUnavailable
from client.scorer import ResumeError, Scorer, Summary

__all__ = ["ClientFault", "ResumeError", "Scorer", "ServerUnavailable", "Summary"]
