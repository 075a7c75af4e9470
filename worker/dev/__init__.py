"""Development tools: the guard simulator, the embedded stack, the demo."""
