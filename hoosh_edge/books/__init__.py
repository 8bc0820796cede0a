"""The books: database, ledger, rules, prices, money, the response cache and the key store. No HTTP, no wire format."""
