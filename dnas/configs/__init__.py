"""Config files: one `get_config()` each (`--config=dnas/configs/digits.py`)."""
