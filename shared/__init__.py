"""Parts every scanguard process shares: settings, wire schemas, key names, Redis, logging."""
