"""Window → answers: the report (inventory, cost, drift, exposures, stale instances) and
policy findings, read through the history's connection protocol.
"""
