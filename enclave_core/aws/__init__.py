"""AWS clients and the instance role's credentials."""
