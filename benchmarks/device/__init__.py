"""What a session with a lent GPU runs in one go, rehearsed on the CPU at tiny size."""
