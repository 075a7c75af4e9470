"""Pure code: the message documents, errors and their reasons, offset tracking. Imports nothing of guardq."""
