"""One module per command: what it checks, the job it runs, the summary it reports.

Layer rule: commands import engine, transport, ui and the base modules (errors, spec); nothing
below imports a command. The command line (cli.py) is the only importer of this package."""
