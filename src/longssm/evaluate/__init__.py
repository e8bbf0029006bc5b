"""Length-extension evaluation: every metric runs as an exact chunked recurrence (memory flat in L)."""
