"""``sendguard dmarc``: DMARC aggregate (rua) reports turned into Prometheus metrics.

- :mod:`.settings`: the ``[dmarc]`` table;
- :mod:`.report`: one aggregate report's XML (RFC 7489 appendix C, and the dmarc-2.0 namespace);
- :mod:`.ingest`: finding reports in the sources (files, folders, maildirs, mboxes, mail attachments);
- :mod:`.imap`: fetching report mails from an IMAP mailbox (``[dmarc.imap]``), read-only;
- :mod:`.store`: the SQLite table that keeps each report once, by reporter and report id;
- :mod:`.metrics`: the collector that exports the totals from that table at each scrape;
- :mod:`.service`: one pass over the sources, and the loop ``--follow`` and ``sendguard run`` start.

Reference: docs/dmarc.md.
"""
