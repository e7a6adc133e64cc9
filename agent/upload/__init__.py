"""podcap.agent.upload: captured data on its way to the collector.

``encoded`` is the chunk as it travels (already serialized, never copied again); ``upload_log`` keeps every
chunk, in memory or spooled to disk, until the collector acknowledges it, and orders what each session sends.
"""
