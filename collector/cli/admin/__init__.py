"""Administration verbs: ``podcap audit`` (who did what) and ``podcap certs`` (a quick start's CA and certificates)."""
