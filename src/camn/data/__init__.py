"""Data: sources (one reader a format), protocols, and the prepared store."""
