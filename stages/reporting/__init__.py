"""The report stage's library: its runs and their seeds (`runs.py`)."""
