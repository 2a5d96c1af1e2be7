"""Raw text -> WordPiece vocabulary -> pre-training TFRecords (Google's format), streaming and
parallel.

Direction between the packages: tfrecords_tools depends on kbert, never the reverse. It imports
kbert's shared definitions of the data on disk, `kbert.features` (the record format),
`kbert.records` (finding and checking shards), `kbert.vocabulary` (the vocab.txt rules) and
`kbert.io` (atomic writes), and nothing else of kbert; only `kbert.cli` imports tfrecords_tools.
"""
