"""The code that runs on the target host: shipped through the SSH channel, never installed.

Standard library only (zstandard when the target has it); must run on Python 3.6.
Layers, each importing only those after it: jobs -> saveset -> tree -> target -> wire -> errors.
"""
