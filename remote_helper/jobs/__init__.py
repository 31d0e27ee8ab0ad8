"""The jobs the helper runs: the server loop (HELLO, OPEN dispatch), dup, and the saveset jobs.

Layer rule: jobs sit on top; they import target, saveset, wire and errors, nothing imports them."""
