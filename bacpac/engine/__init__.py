"""The engine: opening the source, reading and compressing blocks, pacing, delta and dedup.

Layer rule: the engine imports only the base modules (errors) and what it shares with the
helper (remote_helper.wire, remote_helper.target); never transport, ui or a command."""
