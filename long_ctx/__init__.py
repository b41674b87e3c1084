"""Data stages: NQ long-context records -> query/positive/negative -> token ids -> padded rows."""
