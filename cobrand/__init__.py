"""cobrand: the small package both parties share.

Building blocks only (wire-contract code, PKI and RPC core, schemas, PSI primitives, the split
model): it never imports `gateway`, `bank_node` or `partner_node`; `cobrand.cli` alone composes
them.
"""
