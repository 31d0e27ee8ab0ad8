"""The inventory: a YAML file → validated frozen dataclasses (model.py); errors name the
file, the line and the key (load.py)."""
