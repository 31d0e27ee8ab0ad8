"""Transport: the Channel to the helper (local pipe or SSH) and the helper session over it.

Layer rule: transport imports the base modules and remote_helper.wire; never the engine, ui or a
command. Paramiko is imported only inside transport/ssh/."""
