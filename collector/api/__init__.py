"""The collector's gRPC servicers: ``Control`` for the CLI (``control``), ``Ingest`` for the agents (``ingest``, with
the zero-copy chunk decoding of ``wire``), authentication and authorization (``auth``), and the one table from
podcap's errors to status codes (``errors``)."""
