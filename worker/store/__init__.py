"""Redis: key shapes, the verdict store and its leases, replay marks and tokens, start-up checks."""
