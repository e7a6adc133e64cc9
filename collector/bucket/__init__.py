"""The bucket's client: ``objects``, the one module that talks to S3-compatible object storage (PUT, ranged GET,
delete, list). What the objects hold — compressed segments with their block index, the manifest and its pages — is a
byte format, kept in ``podcap.formats.bucket`` and shared with the CLI (which reads a capture straight from its
bucket, with the user's own credentials, when no collector is left). The collector's capture logic never imports
this package: it reaches the bucket through the storage interface (``podcap.collector.storage.tiered``)."""
