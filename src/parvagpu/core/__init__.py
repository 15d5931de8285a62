"""The data model every stage shares: frozen values, GPU types as data, typed errors. No I/O."""
