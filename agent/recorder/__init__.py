"""The flight recorder on the node: rings of pods' packets on disk (``ring``, ``store``), the recordings and saves
that use them (``manager``), and cutting a saved window into chunks (``save``)."""
