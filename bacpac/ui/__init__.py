"""What a run shows: the events jobs emit, and the sinks that show them (plain, JSON, rich).

Layer rule: ui imports only the base modules (errors); the engine and transport never import ui,
the commands emit events into a Sink."""
