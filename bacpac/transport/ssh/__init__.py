"""The SSH transport: connection, ssh_config, known_hosts, algorithms and the batched writer.

Layer rule: the only package that imports Paramiko; it imports transport.channel and the base
modules, and nothing above it."""
