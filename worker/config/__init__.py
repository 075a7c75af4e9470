"""Settings: every GUARDQ_* variable declared once, its parsers, and the optional extras."""
