"""HTTP blueprints: parse and validate, call the router, frame JSON or SSE."""
