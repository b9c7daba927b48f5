"""Open Data Contract Standard v3 contracts, one YAML per dataset, and the engine that runs their rules."""
