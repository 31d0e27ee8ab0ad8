"""Trees of files: the entry record, the walker, the writer and the pax tar codec."""
