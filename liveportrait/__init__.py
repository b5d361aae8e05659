"""The `liveportrait` command line: local animation and edits, weights, engines, the services, the client."""
