"""Raw text -> WordPiece vocabulary -> pre-training TFRecords (Google's format), streaming and parallel."""
