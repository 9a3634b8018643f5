"""Plans, entitlements, the usage ledger, reservations and payments.

``plans`` reads the plans from the policy file and changes a tenant's plan,
``ledger`` reserves and settles metered usage, ``entitlements`` joins the two for the
gateway and for ``GET /api/v1/billing/entitlements`` (``routes``).

Payments: ``webhooks`` verifies and stores Stripe and Adyen deliveries once,
``processing`` applies each stored event exactly once in the ``worker``'s jobs,
``reconcile`` repairs drift against Stripe's API, and ``payment_routes`` serves
Checkout and signed ``receipts``.
"""
