"""Savesets: the format and its writer, the reader, and the atomic file they are written to.

Layer rule: saveset imports wire, target (file checks) and errors; only jobs import saveset."""
