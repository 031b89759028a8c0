"""Floor 0 (DESIGN §2): records and file formats shared by producers and backends (numpy/json only)."""
