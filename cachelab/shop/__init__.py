"""The application under study: the seeded shop database, its HTTP API (with its
rate-limiting middleware) and the process that serves it."""
