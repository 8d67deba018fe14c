"""Listmonk is told the cap in force of the stream it feeds (``[listmonk.NAME]``).

- :mod:`.settings`: the config tables;
- :mod:`.client`: Listmonk's settings and campaigns API, and its traps;
- :mod:`.window`: which sliding window keeps Listmonk under a cap;
- :mod:`.sync`: the loop that sets it, reads it back and retries;
- :mod:`.service`: the threads ``sendguard run`` and ``sendguard policyd`` start.

The cap itself comes from :mod:`sendguard_policyd.cap_in_force`. Reference: docs/listmonk.md.
"""
