"""Payment providers: BasePaymentProvider, one module per provider, and a registry."""
