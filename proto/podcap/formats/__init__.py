"""The byte formats podcap reads and writes, each in one home, and the one rule for what a read selects.

- ``pcap``: the classic PCAP file and its records (headers, the record walk and its checks; the C walker behind it);
- ``pcapng``: the one pcapng block encoder (SHB, IDB, EPB, ISB and their options) and a streaming writer;
- ``bucket``: the bucket's objects (compressed segments, block index, segment pages, manifest);
- ``selection``: what a read of a stored capture means — which pods, which segments overlap a time window, and
  which records the window and a BPF filter keep — applied alike by the collector's ``Download`` and by ``podcap get
  --from s3://``, so the two cannot disagree.

This layer sits beside the contract in the shared ``podcap`` package and imports nothing of ``podcap.agent`` or
``podcap.collector`` (``.importlinter``): any side, the CLI included, may build on it.
"""
