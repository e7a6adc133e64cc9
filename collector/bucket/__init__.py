"""The bucket: what podcap keeps in S3-compatible object storage, shared by the collector (which writes it) and the
CLI (which can read a capture straight from it, with the user's own credentials, when no collector is left):
``objects`` (the one S3 client) and ``manifest`` (the file per capture that makes the bucket explain itself)."""
