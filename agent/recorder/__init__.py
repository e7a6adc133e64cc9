"""The flight recorder on the node: rings of pods' packets on disk (``ring``, ``store``), the recordings that write
them (``manager``), saves of their windows (``saves``), and cutting a window into chunks with its accounting
(``window``)."""
