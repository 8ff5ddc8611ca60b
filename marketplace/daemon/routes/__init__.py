"""The daemon's HTTP routes, one module per resource."""
