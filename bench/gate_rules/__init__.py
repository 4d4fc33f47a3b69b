"""Default rules of ``bench gate`` (package data: ``default.toml``)."""
