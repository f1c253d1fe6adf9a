"""Machine states: named states per machine, as episodes with start, end and duration."""
