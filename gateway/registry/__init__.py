"""Governed artifacts: typed specs, content hashes, versions, aliases, promotions and audit."""
