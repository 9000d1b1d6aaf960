"""Pure values and rules, no I/O: records, time, prices, policy, what counts as exposed.

Everything here takes plain values and returns plain values; every other layer may import
it, and it imports nothing of ours but :mod:`nexus_audit.errors`.
"""
