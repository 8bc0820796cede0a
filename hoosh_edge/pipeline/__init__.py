"""A call's whole life, Flask-free: may this caller use it, cache and single flight, route, admit, try targets, settle, store, record."""
