"""The target: device facts, the checks before writing, opening it and writing an image.

Layer rule: target imports wire and errors; never saveset or jobs."""
