"""Payments: EIP-712 vouchers, the credit ledger and the claimer. No HTTP here."""
