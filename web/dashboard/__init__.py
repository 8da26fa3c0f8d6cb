"""The operations dashboard's data: every number of the page (data) and the RQ panel (queues)."""
