"""The ``podcap`` command line, its Wireshark extcap and the pieces only they use.

Grouped by feature: ``capture/`` (start, stop, delete, status, list), ``get/`` (download, resume, merge, the bucket
reader), ``live/`` (follow and the live pcapng stream), ``extcap/`` (the Wireshark interface), ``admin/`` (audit,
certificates); beside them the pieces every verb shares: ``main`` (the command and its verbs), ``client`` (the
collector connection and its errors), ``render``, ``terminal``, ``units``, ``words``, ``errors``, ``dedup``,
``complete`` and ``demo``.

gRPC's C core logs to stderr on its own (``E1207 ... ssl_transport_security.cc ... Cannot load server root
certificates``) before the call fails with the error the CLI turns into its one line; for a command-line tool those
lines are noise in front of the message that matters. The C core reads ``GRPC_VERBOSITY`` once, when ``grpc`` is
first imported, and every entry point of the CLI (``podcap``, ``kubectl podcap``, ``podcap-extcap``) imports this
package before anything imports ``grpc``: so it is set here, unless the user set it (``GRPC_VERBOSITY=ERROR podcap
…`` shows them again).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
