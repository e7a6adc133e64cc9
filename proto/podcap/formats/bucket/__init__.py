"""The bucket's object format, shared by the collector (which writes it) and the CLI (which can read a capture
straight from its bucket): a segment as a compressed object with its block index (``blocks``), the seekable-file
plumbing its readers share (``seekable``), and the manifest with its segment pages that make a capture in the bucket
explain itself (``manifest``). Nothing here talks to S3: readers take a ``blocks.RangeSource``."""
