"""The web console's HTTP entry: static console assets and the API as JSON over HTTP (Connect protocol)."""
