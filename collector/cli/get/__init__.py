"""``podcap get``: downloading a capture's per-pod files (resumable), merging them into one pcapng file while they
download (the C merge core), and reading a capture straight from its bucket (``--from s3://``)."""
