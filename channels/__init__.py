"""Where we sell: a SalesChannel base and one class per channel, with a registry."""
