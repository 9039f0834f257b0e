"""Offline jobs over files: ``qrank score-file`` (readers and writers, resumable parts)."""
